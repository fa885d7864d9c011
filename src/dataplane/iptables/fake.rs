//! A strict in-memory stand-in for `iptables`, `iptables-restore` and
//! `iptables-save`, for unit tests. It refuses what the kernel refuses (a
//! rule in a chain that does not exist, a jump to a chain that does not
//! exist, deleting a rule that is not there, deleting a chain that is still
//! referenced or not empty) and applies each table of a restore
//! transaction atomically at its COMMIT, like iptables-legacy-restore.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dataplane::exec::{Exec, ExecOutput};
use crate::dataplane::xtables::shell_words;

const BUILTIN_CHAINS: &[(&str, &[&str])] = &[
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("mangle", &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]),
];
const BUILTIN_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "REJECT",
    "RETURN",
    "MARK",
    "MASQUERADE",
    "DNAT",
    "SNAT",
    "LOG",
    "CONNMARK",
];

/// One chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// A built-in chain (cannot be deleted).
    pub builtin: bool,
    /// Rule specs, normalized (words joined by one space, quotes dropped).
    pub rules: Vec<String>,
}

/// table -> chain -> chain.
pub type Tables = BTreeMap<String, BTreeMap<String, Chain>>;

/// The fake kernel state plus a log of every call.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Current rules.
    pub tables: Tables,
    /// Every call: program, arguments, standard input.
    pub calls: Vec<(String, Vec<String>, String)>,
    /// Fail the next restore with this message (simulates the kernel
    /// refusing a transaction, e.g. a missing match module).
    pub refuse_next_restore: Option<String>,
}

/// A handle shared between the fake (inside a backend) and the test.
#[derive(Debug, Clone)]
pub struct FakeIptables(Arc<Mutex<FakeState>>);

impl Default for FakeIptables {
    fn default() -> Self {
        FakeIptables::new()
    }
}

/// Print a normalized rule the way the tools do: the comment quoted.
fn quote_comment(rule: &str) -> String {
    match rule.split_once("--comment ") {
        Some((head, rest)) => {
            // The comment runs up to the next option (not up to any " -":
            // our endpoint comments read "ns/svc:port/TCP -> 10.0.0.1:80").
            let end = [" -m ", " -j ", " -p ", " -s ", " -d ", " ! "]
                .iter()
                .filter_map(|o| rest.find(o))
                .min()
                .unwrap_or(rest.len());
            format!("{head}--comment \"{}\"{}", &rest[..end], &rest[end..])
        }
        None => rule.to_string(),
    }
}

/// Normalize a rule spec for comparison.
pub fn normalize(spec: &str) -> String {
    shell_words(spec).join(" ")
}

fn fresh_tables() -> Tables {
    BUILTIN_CHAINS
        .iter()
        .map(|(t, chains)| {
            (
                t.to_string(),
                chains
                    .iter()
                    .map(|c| {
                        (
                            c.to_string(),
                            Chain {
                                builtin: true,
                                rules: Vec::new(),
                            },
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

fn target(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split(' ').collect();
    words.windows(2).find(|w| w[0] == "-j").map(|w| w[1])
}

fn check_target(chains: &BTreeMap<String, Chain>, rule: &str) -> Result<(), String> {
    match target(rule) {
        Some(t) if !BUILTIN_TARGETS.contains(&t) && !chains.contains_key(t) => {
            Err(format!("Couldn't load target `{t}':No such file or directory"))
        }
        _ => Ok(()),
    }
}

impl FakeIptables {
    /// Empty built-in chains only.
    pub fn new() -> FakeIptables {
        FakeIptables(Arc::new(Mutex::new(FakeState {
            tables: fresh_tables(),
            ..Default::default()
        })))
    }

    /// Lock the state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules of one chain (normalized).
    pub fn rules(&self, table: &str, chain: &str) -> Option<Vec<String>> {
        self.state().tables.get(table)?.get(chain).map(|c| c.rules.clone())
    }

    /// A copy of every table.
    pub fn tables(&self) -> Tables {
        self.state().tables.clone()
    }

    /// Restore input sent so far, in order.
    pub fn restores(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter(|(p, _, _)| p.ends_with("-restore"))
            .map(|(_, _, i)| i.clone())
            .collect()
    }

    fn restore(tables: &mut Tables, args: &[String], input: &str) -> Result<(), String> {
        let noflush = args.iter().any(|a| a == "--noflush");
        let mut current: Option<(String, BTreeMap<String, Chain>)> = None;
        for (n, raw) in input.lines().enumerate() {
            let line = raw.trim();
            let at = |msg: String| format!("line {}: {msg}: {line}", n + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(at("table started before COMMIT".into()));
                }
                let mut copy = tables
                    .get(name)
                    .cloned()
                    .ok_or_else(|| at(format!("unknown table {name}")))?;
                if !noflush {
                    copy.retain(|_, c| c.builtin);
                    copy.values_mut().for_each(|c| c.rules.clear());
                }
                current = Some((name.to_string(), copy));
                continue;
            }
            if line == "COMMIT" {
                let (name, chains) = current.take().ok_or_else(|| at("COMMIT without table".into()))?;
                tables.insert(name, chains);
                continue;
            }
            let (_, chains) = current.as_mut().ok_or_else(|| at("rule outside a table".into()))?;
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("").to_string();
                match chains.get_mut(&name) {
                    Some(c) if !c.builtin => c.rules.clear(),
                    Some(_) => {}
                    None => {
                        chains.insert(name, Chain::default());
                    }
                }
                continue;
            }
            let words = shell_words(line);
            let (op, chain) = (
                words.first().map(String::as_str).unwrap_or(""),
                words.get(1).cloned().unwrap_or_default(),
            );
            let spec = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            Self::apply(chains, op, &chain, &spec).map_err(at)?;
        }
        if current.is_some() {
            return Err("input ended without COMMIT".into());
        }
        Ok(())
    }

    fn apply(chains: &mut BTreeMap<String, Chain>, op: &str, chain: &str, spec: &str) -> Result<(), String> {
        match op {
            "-A" | "-I" => {
                check_target(chains, spec)?;
                let c = chains
                    .get_mut(chain)
                    .ok_or_else(|| format!("chain `{chain}' does not exist"))?;
                if op == "-A" {
                    c.rules.push(spec.to_string());
                } else {
                    c.rules.insert(0, spec.to_string());
                }
            }
            "-D" | "-C" => {
                let c = chains
                    .get_mut(chain)
                    .ok_or_else(|| format!("chain `{chain}' does not exist"))?;
                let pos = c
                    .rules
                    .iter()
                    .position(|r| r == spec)
                    .ok_or("Bad rule (does a matching rule exist in that chain?)")?;
                if op == "-D" {
                    c.rules.remove(pos);
                }
            }
            "-N" => {
                if chains.contains_key(chain) {
                    return Err("Chain already exists".into());
                }
                chains.insert(chain.to_string(), Chain::default());
            }
            "-F" => chains
                .get_mut(chain)
                .ok_or("No chain/target/match by that name")?
                .rules
                .clear(),
            "-X" => {
                let c = chains.get(chain).ok_or("No chain/target/match by that name")?;
                if c.builtin {
                    return Err("Cannot delete built-in chain".into());
                }
                if !c.rules.is_empty() {
                    return Err("Directory not empty".into());
                }
                if chains
                    .values()
                    .any(|c| c.rules.iter().any(|r| target(r) == Some(chain)))
                {
                    return Err("Too many links".into());
                }
                chains.remove(chain);
            }
            other => return Err(format!("unknown command {other}")),
        }
        Ok(())
    }

    fn save(tables: &Tables) -> String {
        let mut out = String::new();
        for (name, chains) in tables {
            out.push_str(&format!("*{name}\n"));
            for (c, chain) in chains {
                out.push_str(&format!(":{c} {} [0:0]\n", if chain.builtin { "ACCEPT" } else { "-" }));
            }
            for (c, chain) in chains {
                for r in &chain.rules {
                    out.push_str(&format!("-A {c} {}\n", quote_comment(r)));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

impl Exec for FakeIptables {
    fn run(&mut self, program: &str, args: &[&str], stdin: &[u8]) -> std::io::Result<ExecOutput> {
        let mut state = self.state();
        let input = String::from_utf8_lossy(stdin).into_owned();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        state.calls.push((program.to_string(), args.clone(), input.clone()));
        let ok = |stdout: String| {
            Ok(ExecOutput {
                success: true,
                code: Some(0),
                stdout: stdout.into_bytes(),
                stderr: Vec::new(),
            })
        };
        let fail = |msg: String| {
            Ok(ExecOutput {
                success: false,
                code: Some(1),
                stdout: Vec::new(),
                stderr: msg.into_bytes(),
            })
        };
        if program.ends_with("-restore") {
            if let Some(msg) = state.refuse_next_restore.take() {
                return fail(msg);
            }
            let mut copy = state.tables.clone();
            return match Self::restore(&mut copy, &args, &input) {
                Ok(()) => {
                    state.tables = copy;
                    ok(String::new())
                }
                // Tables committed before the failing one stay committed, as
                // with the real tool; the failing table is untouched.
                Err(e) => {
                    let committed = Self::committed_prefix(&state.tables, &args, &input);
                    state.tables = committed;
                    fail(format!("{program}: {e}"))
                }
            };
        }
        if program.ends_with("-save") {
            return ok(Self::save(&state.tables));
        }
        if args.iter().any(|a| a == "--version") {
            return ok(format!("{program} v1.8.9 (fake)\n"));
        }
        // iptables [-w N] [-t table] OP CHAIN spec...
        let mut table = "filter".to_string();
        let mut rest: Vec<String> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-w" | "-W" => {
                    it.next();
                }
                "-t" => table = it.next().cloned().unwrap_or_default(),
                _ => rest.push(a.clone()),
            }
        }
        let (op, chain) = (
            rest.first().cloned().unwrap_or_default(),
            rest.get(1).cloned().unwrap_or_default(),
        );
        let spec = rest.get(2..).map(|w| w.join(" ")).unwrap_or_default();
        if op == "-S" {
            let Some(c) = state.tables.get(&table).and_then(|t| t.get(&chain)) else {
                return fail(format!("iptables: chain `{chain}' in table `{table}' does not exist"));
            };
            let mut out = format!("-P {chain} ACCEPT\n");
            for r in &c.rules {
                out.push_str(&format!("-A {chain} {}\n", quote_comment(r)));
            }
            return ok(out);
        }
        let Some(chains) = state.tables.get_mut(&table) else {
            return fail(format!("table {table} does not exist"));
        };
        match Self::apply(chains, &op, &chain, &spec) {
            Ok(()) => ok(String::new()),
            Err(e) => fail(e),
        }
    }
}

impl FakeIptables {
    /// The state after the tables that committed before an error.
    fn committed_prefix(tables: &Tables, args: &[String], input: &str) -> Tables {
        let mut copy = tables.clone();
        let mut block = String::new();
        for line in input.lines() {
            block.push_str(line);
            block.push('\n');
            if line.trim() == "COMMIT" {
                let mut attempt = copy.clone();
                if Self::restore(&mut attempt, args, &block).is_err() {
                    break;
                }
                copy = attempt;
                block.clear();
            }
        }
        copy
    }
}
