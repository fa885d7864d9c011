//! `sliceproxy render`: the table a node would build from a file, printed
//! as frontends and verdicts, or as the rules a full sync of a mode writes.

use std::net::IpAddr;
use std::process::ExitCode;

use super::{EXIT_USAGE, FamilyArg, Output, RenderArgs, load_config};
use crate::dataplane::build;
use crate::model::IpFamily;
use crate::render::{self, RenderOptions};
use crate::snapshot::RenderInput;

/// Run `render`.
pub fn run(args: RenderArgs) -> ExitCode {
    let config = match load_config(&args.flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Decoded object by object, keeping only the model: a bad object is
    // reported and skipped, the rest is rendered, and the exit status is 1.
    let input = match RenderInput::from_file(&args.file, &config.hostname) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("sliceproxy render: {}: {e}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
    for e in &input.errors {
        eprintln!("sliceproxy render: skipped {e}");
    }
    if !input.node_found {
        eprintln!(
            "sliceproxy render: note: no Node named {:?} in the file; rendering without zone or node addresses (set --hostname-override)",
            config.hostname
        );
    }
    let table = input.tracker.table();
    let node_addresses: Vec<IpAddr> = input.node.as_ref().map(|n| n.addresses.clone()).unwrap_or_default();
    let opts = RenderOptions {
        settings: build::node_settings(&config, &config.nodeport_addresses.select(&node_addresses)),
        families: match args.ip_family {
            None => Vec::new(),
            Some(FamilyArg::Ipv4) => vec![IpFamily::V4],
            Some(FamilyArg::Ipv6) => vec![IpFamily::V6],
        },
    };
    if args.flags.proxy_mode.is_some() {
        let family = match args.ip_family {
            Some(FamilyArg::Ipv6) => Some(IpFamily::V6),
            Some(FamilyArg::Ipv4) => Some(IpFamily::V4),
            None => None,
        };
        match build::render_rules(&config, table, family, &opts.settings) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("sliceproxy render: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        let rows = render::rows(table, &opts);
        match args.output {
            Output::Table => print!("{}", render::to_text(&rows)),
            Output::Json => println!("{}", render::to_json(&rows)),
        }
    }
    if input.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
