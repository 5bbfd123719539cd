//! The fleet dashboard's static files, compiled into whichever binary serves the page, so a
//! unit or a workstation needs nothing beside it. fv-edge serves them live-only; fv-fleet
//! serves them with its history API. The page's logic lives in the `.js` files beside this
//! crate (tested with node: `dashboard/tests/`).

/// One file of the page.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the page loads.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: include_bytes!("../app.js"),
    },
    Asset {
        path: "/fleet.js",
        content_type: JS,
        body: include_bytes!("../fleet.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../style.css"),
    },
    Asset {
        path: "/vendor/mqtt.esm.js",
        content_type: JS,
        body: include_bytes!("../vendor/mqtt.esm.js"),
    },
    Asset {
        path: "/vendor/mqtt.LICENSE.md",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../vendor/mqtt.LICENSE.md"),
    },
];

/// The file served at a request path (`/` is the page; a query string is ignored: the page's
/// settings travel there).
pub fn asset(url_path: &str) -> Option<&'static Asset> {
    let path = url_path.split(['?', '#']).next().unwrap_or("/");
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_page_and_nothing_outside_it() {
        let page = asset("/?broker=ws://x:1").unwrap();
        assert!(String::from_utf8_lossy(page.body).contains("FractuVision fleet"));
        assert!(asset("/vendor/mqtt.esm.js").is_some());
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("/config.json").is_none());
    }
}
