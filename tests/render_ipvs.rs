//! `sliceproxy render --proxy-mode ipvs` against a golden file (regenerate
//! with `UPDATE_GOLDEN=1 cargo test --test render_ipvs`).

use std::path::Path;
use std::process::Command;

#[test]
fn render_ipvs_example_matches_golden() {
    let out = Command::new(env!("CARGO_BIN_EXE_sliceproxy"))
        .args([
            "render",
            "--proxy-mode",
            "ipvs",
            "-f",
            "examples/cluster.yaml",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/48",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NODE_NAME")
        .output()
        .expect("run sliceproxy");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let actual = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ipvs-node-a-ipv4.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{} differs from the output:\n{actual}",
        path.display()
    );
    // The layout is constant-size in iptables: no per-service rule.
    assert!(!actual.contains("-A SP-IPVS-SERVICES -d "));
}
