//! The process seam of the dataplanes that drive command-line tools
//! (`iptables-restore`, `ipset`, ...): one trait, a host implementation
//! (optionally inside a named network namespace), and fakes in each mode.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// What a finished process returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status 0.
    pub success: bool,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Standard error as text, trimmed (for error messages).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// A tool that could not be run, or that exited with an error.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started (not installed, no permission).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program} {args}: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// What it said on standard error.
        stderr: String,
    },
}

impl ToolError {
    /// The program that failed.
    pub fn program(&self) -> &str {
        match self {
            ToolError::Spawn { program, .. } | ToolError::Failed { program, .. } => program,
        }
    }
}

/// Run `program args...` with `stdin`; its standard output when it exits 0.
pub fn run_tool(exec: &mut dyn Exec, program: &str, args: &[&str], stdin: &[u8]) -> Result<String, ToolError> {
    let out = exec.run(program, args, stdin).map_err(|source| ToolError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !out.success {
        return Err(ToolError::Failed {
            program: program.to_string(),
            args: args.join(" "),
            stderr: out.stderr_text(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a program with arguments and standard input.
pub trait Exec: Send {
    /// Run `program args...`, feeding `stdin`; `Err` only when it could not be started.
    fn run(&mut self, program: &str, args: &[&str], stdin: &[u8]) -> std::io::Result<ExecOutput>;
}

/// Runs programs on this host, or inside a named network namespace
/// (`ip netns exec NAME ...`), which is how tests aim a backend at the
/// node namespace they built.
#[derive(Debug, Clone, Default)]
pub struct HostExec {
    netns: Option<String>,
}

impl HostExec {
    /// Run on this host, in the agent's own network namespace.
    pub fn new() -> HostExec {
        HostExec { netns: None }
    }

    /// Run inside the named network namespace.
    pub fn in_netns(name: &str) -> HostExec {
        HostExec {
            netns: Some(name.to_string()),
        }
    }
}

impl Exec for HostExec {
    fn run(&mut self, program: &str, args: &[&str], stdin: &[u8]) -> std::io::Result<ExecOutput> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(mut input) = child.stdin.take() {
            // A tool that exits early (bad input) closes its stdin: the
            // broken pipe is not the error to report, its stderr is.
            let _ = input.write_all(stdin);
        }
        let out = child.wait_with_output()?;
        Ok(ExecOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
