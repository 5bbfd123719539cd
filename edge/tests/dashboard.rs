//! The fleet dashboard: its state logic under node's test runner, and the end-to-end browser
//! test (`dashboard/tests/e2e.mjs`: Mosquitto over WebSockets, two fv-edge daemons, this
//! fv-edge serving the page, Debian's Chromium through playwright-core).
//!
//! Needs node, `npm ci` in dashboard/ and /usr/bin/chromium (`.ci/run` installs them). Without
//! them the tests say so and pass, unless FV_REQUIRE_BROWSER=1 (CI), which makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dashboard_dir() -> PathBuf {
    common::workspace().join("dashboard")
}

fn missing(what: &str) -> bool {
    if std::env::var("FV_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("FV_REQUIRE_BROWSER=1 but {what}");
    }
    eprintln!("skipped: {what}");
    true
}

fn node() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("node"))
            .find(|p| p.is_file())
    })
}

fn run_node(args: &[&str], envs: &[(&str, &Path)]) {
    let node = node().expect("node");
    let out = Command::new(node)
        .args(args)
        .current_dir(common::workspace())
        .envs(envs.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "node {args:?} failed:\n{text}");
}

#[test]
fn fleet_state_unit_tests() {
    if node().is_none() && missing("node is not installed") {
        return;
    }
    run_node(&["--test", "dashboard/tests/"], &[]);
}

#[test]
fn vendored_mqtt_matches_package_json() {
    let installed = dashboard_dir().join("node_modules/mqtt/dist/mqtt.esm.js");
    if !installed.exists()
        && missing("dashboard/node_modules is missing (npm ci --prefix dashboard)")
    {
        return;
    }
    // The page runs the vendored copy; the test and package.json pin the npm one.
    assert!(
        std::fs::read(&installed).unwrap()
            == std::fs::read(dashboard_dir().join("vendor/mqtt.esm.js")).unwrap(),
        "dashboard/vendor/mqtt.esm.js differs from the mqtt in package.json: run `npm run vendor` in dashboard/"
    );
}

#[test]
fn browser_end_to_end() {
    if node().is_none() && missing("node is not installed") {
        return;
    }
    if !dashboard_dir()
        .join("node_modules/playwright-core")
        .exists()
        && missing("dashboard/node_modules is missing (npm ci --prefix dashboard)")
    {
        return;
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() && missing("Chromium is not installed (apt-get install chromium)") {
        return;
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    run_node(
        &["dashboard/tests/e2e.mjs"],
        &[
            ("FV_EDGE_BIN", Path::new(env!("CARGO_BIN_EXE_fv-edge"))),
            ("CHROMIUM", &chromium),
            ("ARTIFACTS", &artifacts),
        ],
    );
    assert!(artifacts.join("dashboard-e2e.png").exists());
}
