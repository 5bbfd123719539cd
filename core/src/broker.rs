//! The broker address both ends of the fleet link take (fv-edge publishes, fv-fleet
//! subscribes): `mqtt://HOST[:PORT]` or, with TLS, `mqtts://HOST[:PORT]`.

use std::fmt;
use std::str::FromStr;

/// A parsed broker URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `mqtts://` (or `ssl://`): TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// 1883 without TLS and 8883 with it, unless given.
    pub port: u16,
}

/// A broker URL that cannot be used, with the text given.
#[derive(Debug, thiserror::Error)]
#[error("MQTT URL `{0}`: use mqtt://HOST:PORT or mqtts://HOST:PORT")]
pub struct BadBrokerUrl(pub String);

impl FromStr for BrokerUrl {
    type Err = BadBrokerUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = || BadBrokerUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u: BrokerUrl = "mqtt://broker.local".parse().unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.local", 1883)
        );
        let u: BrokerUrl = "mqtts://10.0.0.2:9883/".parse().unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.2", 9883));
        assert_eq!(u.to_string(), "mqtts://10.0.0.2:9883");
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://:1883".parse::<BrokerUrl>().is_err());
        assert!("mqtt://h:port".parse::<BrokerUrl>().is_err());
    }
}
