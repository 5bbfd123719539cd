//! The dashboard with history, in a browser (`dashboard/tests/fleet-e2e.mjs`): Mosquitto, this
//! fv-fleet, two fv-edge daemons, Debian's Chromium through playwright-core.
//!
//! Needs node, `npm ci` in dashboard/ and /usr/bin/chromium (`.ci/run` installs them). Without
//! them the test says so and passes, unless FV_REQUIRE_BROWSER=1 (CI), which makes that a
//! failure.

use std::path::Path;

#[test]
fn history_in_the_browser_survives_reload_and_broker_restart() {
    let Some((node, chromium)) = fv_e2e::browser_tools() else {
        return;
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    let edge = fv_e2e::bin("fv-edge");
    fv_e2e::run_node(
        &node,
        &["dashboard/tests/fleet-e2e.mjs"],
        &[
            ("FV_EDGE_BIN", edge.as_os_str()),
            ("FV_FLEET_BIN", env!("CARGO_BIN_EXE_fv-fleet").as_ref()),
            ("CHROMIUM", chromium.as_os_str()),
            ("ARTIFACTS", artifacts.as_os_str()),
        ],
    );
    assert!(artifacts.join("fleet-e2e.png").exists());
}
