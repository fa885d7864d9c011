//! The xtables tooling shared by every mode that writes iptables rules (the
//! iptables mode, and the IPVS mode's small constant layer): tool names per
//! family and variant, which variant the host uses, the restore/save/list
//! runners, jumps from the built-in chains (check, insert, delete until
//! gone), and finding and deleting our chains. Everything goes through the
//! [`Exec`] seam, so the strict fake can stand in for the tools.
//!
//! Every chain of ours starts with [`CHAIN_PREFIX`]; the IPVS layer's with
//! [`IPVS_LAYER_PREFIX`] inside it. Both modes live in the same tables, so
//! the ownership rule is written here, once ([`chain_owner`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::exec::{Exec, ToolError, run_tool};
use super::{DataplaneError, Operation};
use crate::model::IpFamily;

/// Prefix of every chain sliceproxy creates.
pub const CHAIN_PREFIX: &str = "SP-";
/// Prefix of the IPVS mode's chains (inside [`CHAIN_PREFIX`]).
pub const IPVS_LAYER_PREFIX: &str = "SP-IPVS-";

/// Which mode a chain of ours belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainOwner {
    /// The iptables mode.
    IptablesMode,
    /// The IPVS mode's iptables layer.
    IpvsLayer,
}

/// The owner of a chain, `None` for chains that are not ours.
pub fn chain_owner(name: &str) -> Option<ChainOwner> {
    if name.starts_with(IPVS_LAYER_PREFIX) {
        Some(ChainOwner::IpvsLayer)
    } else if name.starts_with(CHAIN_PREFIX) {
        Some(ChainOwner::IptablesMode)
    } else {
        None
    }
}

/// Which iptables the host uses. Both can be installed; the kernel keeps
/// their rules apart, so we must use the one the host firewall uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// iptables-nft (`iptables --version` says `nf_tables`).
    Nft,
    /// iptables-legacy.
    Legacy,
}

/// The two tables we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`.
    Nat,
    /// `filter`.
    Filter,
}

impl Table {
    /// Its name in `iptables-restore` input.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// The table of a name, if it is one of ours.
    pub fn parse(name: &str) -> Option<Table> {
        match name.trim() {
            "nat" => Some(Table::Nat),
            "filter" => Some(Table::Filter),
            _ => None,
        }
    }
}

/// A jump from a built-in chain into one of ours, kept in the built-in
/// chain in first position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// Table.
    pub table: Table,
    /// Built-in chain.
    pub from: &'static str,
    /// Rule spec as written in restore input (the comment double-quoted).
    pub spec: String,
}

/// Arguments a restore transaction runs with: wait for the xtables lock,
/// and change only what the input names.
pub const RESTORE_ARGS: &[&str] = &["-w", "5", "--noflush"];

/// The command names of one family and variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `iptables` / `ip6tables` (and the `-nft`/`-legacy` spellings).
    pub iptables: String,
    /// `iptables-restore`.
    pub restore: String,
    /// `iptables-save`.
    pub save: String,
}

impl Tools {
    /// The tools for a family and variant.
    pub fn new(family: IpFamily, variant: Variant) -> Tools {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let suffix = match variant {
            Variant::Nft => "-nft",
            Variant::Legacy => "-legacy",
        };
        Tools {
            iptables: format!("{base}{suffix}"),
            restore: format!("{base}{suffix}-restore"),
            save: format!("{base}{suffix}-save"),
        }
    }

    /// Apply a restore transaction (`--noflush`): each table of it commits
    /// atomically, or the tool refuses it.
    pub fn restore(&self, exec: &mut dyn Exec, input: &str) -> Result<(), ToolError> {
        run_tool(exec, &self.restore, RESTORE_ARGS, input.as_bytes()).map(drop)
    }

    /// Every table, as `iptables-save` prints it.
    pub fn save(&self, exec: &mut dyn Exec) -> Result<String, ToolError> {
        run_tool(exec, &self.save, &[], b"")
    }

    /// One chain's rules in `-S` form.
    pub fn list(&self, exec: &mut dyn Exec, table: Table, chain: &str) -> Result<String, ToolError> {
        run_tool(exec, &self.iptables, &["-w", "5", "-t", table.name(), "-S", chain], b"")
    }

    fn jump_args<'a>(jump: &'a Jump, op: &'a str, spec: &'a [String]) -> Vec<&'a str> {
        let mut args = vec!["-w", "5", "-t", jump.table.name(), op, jump.from];
        args.extend(spec.iter().map(String::as_str));
        args
    }

    /// Whether the jump is in its built-in chain (`-C`).
    pub fn has_jump(&self, exec: &mut dyn Exec, jump: &Jump) -> bool {
        let spec = shell_words(&jump.spec);
        exec.run(&self.iptables, &Self::jump_args(jump, "-C", &spec), b"")
            .map(|o| o.success)
            .unwrap_or(false)
    }

    /// Insert the jump in first position (`-I`).
    pub fn insert_jump(&self, exec: &mut dyn Exec, jump: &Jump) -> Result<(), ToolError> {
        let spec = shell_words(&jump.spec);
        run_tool(exec, &self.iptables, &Self::jump_args(jump, "-I", &spec), b"").map(drop)
    }

    /// Delete the jump until it is gone: it may have been inserted twice
    /// (two agents raced). A missing tool or jump is not an error.
    pub fn delete_jump(&self, exec: &mut dyn Exec, jump: &Jump) {
        let spec = shell_words(&jump.spec);
        let args = Self::jump_args(jump, "-D", &spec);
        for _ in 0..8 {
            match exec.run(&self.iptables, &args, b"") {
                Ok(o) if o.success => continue,
                _ => break,
            }
        }
    }

    /// Delete `chains` (already unreferenced) in one transaction.
    pub fn delete_chains(
        &self,
        exec: &mut dyn Exec,
        chains: &BTreeMap<Table, BTreeSet<String>>,
    ) -> Result<(), ToolError> {
        let input = delete_chains_input(chains);
        if input.is_empty() {
            return Ok(());
        }
        self.restore(exec, &input)
    }
}

/// Find out which variant the host uses, as kube-proxy's iptables wrapper
/// does: the one holding more rules wins (a host firewall or another
/// component already chose); with none anywhere, what `iptables` points at.
pub fn detect_variant(exec: &mut dyn Exec) -> Variant {
    let count = |exec: &mut dyn Exec, tool: &str| -> usize {
        exec.run(tool, &[], b"")
            .ok()
            .filter(|o| o.success)
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
            .unwrap_or(0)
    };
    let legacy = count(exec, "iptables-legacy-save") + count(exec, "ip6tables-legacy-save");
    let nft = count(exec, "iptables-nft-save") + count(exec, "ip6tables-nft-save");
    if legacy > nft {
        return Variant::Legacy;
    }
    if nft > legacy {
        return Variant::Nft;
    }
    match exec.run("iptables", &["--version"], b"") {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("legacy") => Variant::Legacy,
        _ => Variant::Nft,
    }
}

/// The chains of `owner` declared in an `iptables-save` dump, per table.
pub fn chains_of(save: &str, owner: ChainOwner) -> BTreeMap<Table, BTreeSet<String>> {
    let mut out: BTreeMap<Table, BTreeSet<String>> = BTreeMap::new();
    let mut table = None;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Table::parse(t);
        } else if let (Some(t), Some(rest)) = (table, line.strip_prefix(':')) {
            let name = rest.split_whitespace().next().unwrap_or("");
            if chain_owner(name) == Some(owner) {
                out.entry(t).or_default().insert(name.to_string());
            }
        }
    }
    out
}

/// Restore input that deletes `chains` (declaring each first, which flushes
/// it, so a chain with rules left goes too).
pub fn delete_chains_input(chains: &BTreeMap<Table, BTreeSet<String>>) -> String {
    let mut input = String::new();
    for (table, chains) in chains.iter().filter(|(_, c)| !c.is_empty()) {
        let _ = writeln!(input, "*{}", table.name());
        for c in chains {
            let _ = writeln!(input, ":{c} - [0:0]");
        }
        for c in chains {
            let _ = writeln!(input, "-X {c}");
        }
        let _ = writeln!(input, "COMMIT");
    }
    input
}

/// Split a rule spec into arguments the way iptables-restore does: on
/// spaces, with double quotes grouping (our comments are the only quoted part).
pub fn shell_words(spec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    for ch in spec.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            ' ' if !quoted => {
                if has {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        words.push(cur);
    }
    words
}

/// What a run of one of [`Tools`]' programs was: a restore transaction,
/// a save, or a single command. Our own program names decide (every
/// variant's restore tool ends in `-restore`, its save tool in `-save`).
pub fn operation(program: &str) -> Operation {
    if program.ends_with("-restore") {
        Operation::XtablesRestore
    } else if program.ends_with("-save") {
        Operation::XtablesSave
    } else {
        Operation::XtablesCommand
    }
}

/// A refused or failed xtables command of `family`, as the agent reports it.
pub fn dataplane_error(family: IpFamily, e: ToolError) -> DataplaneError {
    let op = operation(e.program());
    match e {
        ToolError::Spawn { source, .. } => DataplaneError::Exec { op, source },
        ToolError::Failed { program, args, stderr } => DataplaneError::Refused {
            op,
            message: match op {
                Operation::XtablesRestore => format!("{program} ({family}): {stderr}"),
                _ => format!("{program} {args}: {stderr}"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_told_apart_by_owner() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:SP-SVC-A - [0:0]\n:SP-IPVS-SERVICES - [0:0]\nCOMMIT\n*filter\n:SP-FORWARD - [0:0]\nCOMMIT\n*mangle\n:SP-X - [0:0]\nCOMMIT\n";
        let ipt = chains_of(save, ChainOwner::IptablesMode);
        assert_eq!(
            ipt,
            BTreeMap::from([
                (Table::Nat, BTreeSet::from(["SP-SVC-A".to_string()])),
                (Table::Filter, BTreeSet::from(["SP-FORWARD".to_string()])),
            ])
        );
        let ipvs = chains_of(save, ChainOwner::IpvsLayer);
        assert_eq!(ipvs[&Table::Nat], BTreeSet::from(["SP-IPVS-SERVICES".to_string()]));
        assert_eq!(
            delete_chains_input(&ipvs),
            "*nat\n:SP-IPVS-SERVICES - [0:0]\n-X SP-IPVS-SERVICES\nCOMMIT\n"
        );
        assert_eq!(chain_owner("KUBE-SERVICES"), None);
    }

    #[test]
    fn shell_words_group_quoted_comments() {
        assert_eq!(
            shell_words(r#"-m comment --comment "a b" -j X"#),
            ["-m", "comment", "--comment", "a b", "-j", "X"]
        );
    }
}
