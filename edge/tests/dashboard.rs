//! The fleet dashboard and the unit's reading screen: the dashboard's state logic under
//! node's test runner, the reading screen with the network down
//! (`dashboard/tests/screen-e2e.mjs`), and the end-to-end browser test (`dashboard/tests/e2e.mjs`: Mosquitto over WebSockets, two fv-edge daemons, this
//! fv-edge serving the page, Debian's Chromium through playwright-core).
//!
//! Needs node, `npm ci` in dashboard/ and /usr/bin/chromium (`.ci/run` installs them). Without
//! them the tests say so and pass, unless FV_REQUIRE_BROWSER=1 (CI), which makes that a failure.

use fv_e2e::{browser_missing as missing, browser_tools, node, run_node, workspace};
use std::path::{Path, PathBuf};

fn dashboard_dir() -> PathBuf {
    workspace().join("dashboard")
}

#[test]
fn fleet_state_unit_tests() {
    let Some(node) = node() else {
        missing("node is not installed");
        return;
    };
    run_node(&node, &["--test", "dashboard/tests/"], &[]);
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
    let Some((node, chromium)) = browser_tools() else {
        return;
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    run_node(
        &node,
        &["dashboard/tests/e2e.mjs"],
        &[
            ("FV_EDGE_BIN", env!("CARGO_BIN_EXE_fv-edge").as_ref()),
            ("CHROMIUM", chromium.as_os_str()),
            ("ARTIFACTS", artifacts.as_os_str()),
        ],
    );
    assert!(artifacts.join("dashboard-e2e.png").exists());
}

#[test]
fn reading_screen_in_the_browser_with_the_network_down() {
    let Some((node, chromium)) = browser_tools() else {
        return;
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screen-e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    run_node(
        &node,
        &["dashboard/tests/screen-e2e.mjs"],
        &[
            ("FV_EDGE_BIN", env!("CARGO_BIN_EXE_fv-edge").as_ref()),
            ("CHROMIUM", chromium.as_os_str()),
            ("ARTIFACTS", artifacts.as_os_str()),
        ],
    );
    assert!(artifacts.join("screen-e2e.png").exists());
}
