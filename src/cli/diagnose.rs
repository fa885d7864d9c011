//! `sliceproxy diagnose NAMESPACE/SERVICE`: from a file or the live cluster.

use std::process::ExitCode;

use super::{DiagnoseArgs, EXIT_USAGE, Output, load_config, offline_settings};
use crate::config::Config;
use crate::dataplane::nftables::NftError;
use crate::dataplane::nftables::model::name;
use crate::dataplane::nftables::netlink::Nft;
use crate::dataplane::nftables::ruleset::{TABLE, table_family};
use crate::diagnose::{self, Observed};
use crate::model::{IpFamily, ProxyMode, ServiceKey};
use crate::snapshot::Snapshot;

/// Run `diagnose`.
pub fn run(args: DiagnoseArgs) -> ExitCode {
    let config = match load_config(&args.flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = match diagnose::parse_target(&args.target) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sliceproxy diagnose: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let snapshot = match &args.file {
        Some(file) => Snapshot::from_file(file).map_err(|e| format!("{}: {e}", file.display())),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(live_snapshot(&config, &key)).map_err(|e| e.to_string())),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sliceproxy diagnose: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // `--proxy-mode nftables` given on the command line: compare with our
    // tables in this network namespace (a mode from a config file alone does
    // not read the kernel: diagnose also runs away from the node).
    let live_nftables = args.flags.proxy_mode.is_some() && config.mode == ProxyMode::Nftables;
    let observed = match (&args.iptables_save, live_nftables) {
        (Some(_), true) => {
            eprintln!("sliceproxy diagnose: --iptables-save and --proxy-mode nftables exclude each other");
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(path), false) => match std::fs::read_to_string(path) {
            Ok(d) => Some(Observed::from_iptables_save(&d)),
            Err(e) => {
                eprintln!("sliceproxy diagnose: {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, true) => match read_nftables() {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("sliceproxy diagnose: reading our nftables tables: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, false) => None,
    };
    let settings = offline_settings(&config, &snapshot);
    let d = diagnose::diagnose(&snapshot, &key, &config.hostname, &settings, observed.as_ref());
    match args.output {
        Output::Table => print!("{}", diagnose::to_text(&d)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default()),
    }
    if d.traffic_should_flow {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Our tables (`ip`/`ip6 sliceproxy`) in this network namespace, read over
/// netlink into the model; a table that does not exist is reported, not an
/// error.
fn read_nftables() -> Result<Observed, NftError> {
    let mut nft = Nft::open()?;
    let mut tables = Vec::new();
    for family in IpFamily::ALL {
        tables.push((family, nft.dump_table(table_family(family), &name(TABLE))?));
    }
    Ok(Observed::from_nftables(tables))
}

/// The objects `diagnose` needs, listed live: the namespace's Services,
/// EndpointSlices and Pods, Pods elsewhere (for selector mistakes; skipped
/// when not allowed), and the node.
async fn live_snapshot(config: &Config, key: &ServiceKey) -> Result<Snapshot, Box<dyn std::error::Error>> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use kube::api::{Api, ListParams};
    let client = crate::watch::client(config).await?;
    let lp = ListParams::default();
    let ns = &*key.namespace;
    let services = Api::<core::Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let slices = Api::<discovery::EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let pods = match Api::<core::Pod>::all(client.clone()).list(&lp).await {
        Ok(l) => l.items,
        Err(_) => Api::<core::Pod>::namespaced(client.clone(), ns).list(&lp).await?.items,
    };
    let nodes = match Api::<core::Node>::all(client).get_opt(&config.hostname).await {
        Ok(n) => n.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read Node {}", config.hostname);
            Vec::new()
        }
    };
    Ok(Snapshot {
        services,
        slices,
        nodes,
        pods,
        ..Snapshot::default()
    })
}
