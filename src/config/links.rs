//! `[links]`: how a main node listens for its secondaries and a secondary reaches its main
//! node, with which TLS and identity, and who is admitted on each listener.

use super::node::Role;
use super::reader::{seconds, Reader};
use super::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

/// Forwarded operations get this long for an answer; StartProvisioning, FinishProvisioning
/// and Deprovision (hooks, token initialisation) get the long one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub const DEFAULT_LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Where iam-nodelink reports the state of its link, for `iam-nodelink status`.
pub const DEFAULT_NODELINK_STATUS: &str = "/run/aos-iam-nodelink/status";

/// The module whose certificate and key are a node's TLS identity on links.
pub const DEFAULT_LINK_IDENTITY: &str = "iam";

/// When a node link runs inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTls {
    /// TLS once the node is provisioned; in provisioning mode a node without a certificate
    /// may link in the clear (both sides must be in provisioning mode). TCP: always TLS.
    Auto,
    Required,
    /// Never (unix, vsock and stdio links only; refused for TCP).
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinksConfig {
    /// Main node: where secondary nodes' links are accepted.
    pub listen: Vec<crate::proto::transport::LinkAddr>,
    /// Secondary node: where iam-nodelink dials the main node (overridden by `--connect`).
    pub connect: Option<crate::proto::transport::LinkAddr>,
    pub tls: LinkTls,
    /// The module whose certificate is this node's TLS identity.
    pub identity: String,
    pub request_timeout: Duration,
    pub long_request_timeout: Duration,
    /// Secondary: how often iam-nodelink checks that the main node still answers; a link
    /// that misses one is dialed again (`None`: never). A byte pipe (stdio, vchan) cannot
    /// tell that the iamd at its other end restarted; this does.
    pub keepalive: Option<Duration>,
    pub status_file: PathBuf,
    /// Secondary: the uids besides root that may have iamd sign a TLS handshake with the
    /// link identity (SignWithLinkIdentity): iam-nodelink's own user.
    pub signer_uids: Vec<u32>,
    /// Secondary: the main node's id, which its certificate must name; when unset, the id
    /// the main node states in its hello.
    pub main_node_id: Option<String>,
    /// Main: the listeners that admit only some nodes (and CIDs); the others admit any.
    pub admission: Vec<Admission>,
    /// Secondary: iam-nodelink's tunnel socket. When set, iamd reaches its EST and SCEP
    /// servers (zero-touch enrollment, its own renewals, the verify step) through the link
    /// to the main node, and iam-nodelink serves the socket.
    pub tunnel: Option<PathBuf>,
    /// Main: the `host:port` endpoints a secondary may reach through its link (empty: no
    /// tunnels).
    pub tunnel_endpoints: Vec<String>,
    /// Secondary: where iam-nodelink keeps the CRLs the main node hands it (GetCrl, at each
    /// registration and keepalive), checked with beside `paths.crl` once the file exists:
    /// by iamd at ApplyCert and by iam-nodelink on the main node's chain (`None`: not asked).
    pub main_crl: Option<PathBuf>,
}

/// Who may link on one listener: the node ids that may register there (empty: any) and,
/// for vsock, the CIDs they may come from (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub addr: crate::proto::transport::LinkAddr,
    pub nodes: Vec<String>,
    pub cids: Vec<u32>,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig {
            listen: Vec::new(),
            connect: None,
            tls: LinkTls::Auto,
            identity: DEFAULT_LINK_IDENTITY.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            long_request_timeout: DEFAULT_LONG_REQUEST_TIMEOUT,
            keepalive: Some(DEFAULT_KEEPALIVE),
            status_file: PathBuf::from(DEFAULT_NODELINK_STATUS),
            signer_uids: Vec::new(),
            main_node_id: None,
            admission: Vec::new(),
            tunnel: None,
            tunnel_endpoints: Vec::new(),
            main_crl: None,
        }
    }
}

#[inline(never)]
pub(super) fn parse(root: &mut Reader, role: Role) -> Result<LinksConfig, ConfigError> {
    let links = match root.sub("links")? {
        Some(l) => parse_links(l, role)?,
        None => LinksConfig::default(),
    };
    Ok(links)
}

#[inline(never)]
fn parse_links(mut l: Reader, role: Role) -> Result<LinksConfig, ConfigError> {
    use crate::proto::transport::LinkAddr;
    let mut listen = Vec::new();
    for (i, a) in l.strings("listen")?.unwrap_or_default().into_iter().enumerate() {
        let key = format!("listen[{i}]");
        let addr = LinkAddr::parse_listen(&a).map_err(|e| l.err(&key, e))?;
        if listen.contains(&addr) {
            return Err(l.err(&key, format!("\"{a}\" is listed twice")));
        }
        listen.push(addr);
    }
    // Listeners with an admission list: `[[links.listener]]` with its address, the node
    // ids that may register on it and, for vsock, the CIDs they may come from.
    let mut admission = Vec::new();
    for mut t in l.tables("listener")? {
        let a = t.string("address")?.ok_or_else(|| t.err("address", "is required"))?;
        let addr = LinkAddr::parse_listen(&a).map_err(|e| t.err("address", e))?;
        if listen.contains(&addr) {
            return Err(t.err("address", format!("\"{a}\" is listed twice")));
        }
        let nodes = t.strings("nodes")?.unwrap_or_default();
        let cids = t.uints("cids")?;
        if !cids.is_empty() && !matches!(addr, LinkAddr::Vsock { .. }) {
            return Err(t.err("cids", "only a vsock listener has peers by CID"));
        }
        t.finish()?;
        listen.push(addr.clone());
        admission.push(Admission { addr, nodes, cids });
    }
    if role == Role::Secondary && !listen.is_empty() {
        return Err(l.err(
            "listen",
            "only the main node accepts links (node.role is \"secondary\")",
        ));
    }
    let connect = match l.string("connect")? {
        Some(a) => Some(LinkAddr::parse_connect(&a).map_err(|e| l.err("connect", e))?),
        None => None,
    };
    if role == Role::Main && connect.is_some() {
        return Err(l.err(
            "connect",
            "only a secondary node dials the main node (node.role is \"main\")",
        ));
    }
    let tls = match l.string("tls")?.as_deref() {
        None | Some("auto") => LinkTls::Auto,
        Some("required") => LinkTls::Required,
        Some("off") => LinkTls::Off,
        Some(t) => return Err(l.err("tls", format!("\"{t}\" is not one of auto, required, off"))),
    };
    if tls == LinkTls::Off && listen.iter().chain(connect.iter()).any(LinkAddr::is_tcp) {
        return Err(l.err("tls", "\"off\" is refused: links over TCP always use TLS"));
    }
    let tunnel = l.path("tunnel")?;
    if tunnel.is_some() && role == Role::Main {
        return Err(l.err(
            "tunnel",
            "only a secondary node reaches its servers through a link (node.role is \"main\")",
        ));
    }
    let main_crl = l.path("main_crl")?;
    if main_crl.is_some() && role == Role::Main {
        return Err(l.err(
            "main_crl",
            "only a secondary node is handed the main node's CRLs (node.role is \"main\")",
        ));
    }
    let mut tunnel_endpoints = Vec::new();
    for (i, e) in l
        .strings("tunnel_endpoints")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let key = format!("tunnel_endpoints[{i}]");
        if role == Role::Secondary {
            return Err(l.err(&key, "only the main node carries tunnels (node.role is \"secondary\")"));
        }
        let endpoint = endpoint(&e).map_err(|why| l.err(&key, why))?;
        if tunnel_endpoints.contains(&endpoint) {
            return Err(l.err(&key, format!("\"{e}\" is listed twice")));
        }
        tunnel_endpoints.push(endpoint);
    }
    let c = LinksConfig {
        listen,
        connect,
        tls,
        identity: l.string("identity")?.unwrap_or_else(|| DEFAULT_LINK_IDENTITY.into()),
        request_timeout: seconds(&mut l, "request_timeout", 24 * 3600, DEFAULT_REQUEST_TIMEOUT)?,
        long_request_timeout: seconds(&mut l, "long_request_timeout", 24 * 3600, DEFAULT_LONG_REQUEST_TIMEOUT)?,
        // 0 turns the keepalive off.
        keepalive: match l.uint("keepalive", 3600)? {
            Some(0) => None,
            Some(t) => Some(Duration::from_secs(t)),
            None => Some(DEFAULT_KEEPALIVE),
        },
        status_file: l
            .path("status_file")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODELINK_STATUS)),
        signer_uids: l.uints("signer_uids")?,
        main_node_id: l.string("main_node_id")?,
        admission,
        tunnel,
        tunnel_endpoints,
        main_crl,
    };
    l.finish()?;
    Ok(c)
}

/// An endpoint as `links.tunnel_endpoints` and TunnelOpen name it: `host:port`, the host in
/// lower case (an IPv6 address in brackets), the port 1 to 65535.
pub fn endpoint(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("\"{t}\" is not host:port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("\"{t}\": the port must be 1 to 65535")),
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let ipv6 = bracketed && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    if !(name_ok || ipv6) {
        return Err(format!("\"{t}\": \"{host}\" is not a host name or address"));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

    #[test]
    fn endpoints_are_host_and_port_in_one_form() {
        assert_eq!(endpoint("EST.Example:8443").unwrap(), "est.example:8443");
        assert_eq!(endpoint(" 127.0.0.1:443 ").unwrap(), "127.0.0.1:443");
        assert_eq!(endpoint("[::1]:8443").unwrap(), "[::1]:8443");
        for bad in [
            "est",
            "est:0",
            "est:70000",
            ":443",
            "a b:1",
            "[zz]:1",
            "est:443/x",
            "user@est:443",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_are_read_for_the_role_and_checked() {
        let c = load(&[
            "[links]\nlisten = [\"unix:/run/l.sock\", \"vsock:5000\", \"tcp:0.0.0.0:8089\"]\nrequest_timeout = 5\n",
        ])
        .unwrap();
        assert_eq!(c.role, Role::Main);
        assert_eq!(c.links.listen.len(), 3);
        assert_eq!(c.links.request_timeout, Duration::from_secs(5));
        assert_eq!(c.links.long_request_timeout, DEFAULT_LONG_REQUEST_TIMEOUT);
        assert_eq!(c.links.tls, LinkTls::Auto);
        assert_eq!(c.links.keepalive, Some(DEFAULT_KEEPALIVE));
        let k = |v: &str| {
            load(&[&format!(
                "[node]\nrole = \"secondary\"\n[links]\nconnect = \"stdio\"\nkeepalive = {v}\n"
            )])
        };
        assert_eq!(k("5").unwrap().links.keepalive, Some(Duration::from_secs(5)));
        assert_eq!(k("0").unwrap().links.keepalive, None);
        assert!(k("-1").is_err());
        let c = load(&["[links]\ntunnel_endpoints = [\"EST.example:443\", \"[::1]:8443\"]\n"]).unwrap();
        assert_eq!(c.links.tunnel_endpoints, ["est.example:443", "[::1]:8443"]);
        let c = load(&["[node]\nrole = \"secondary\"\n[links]\ntunnel = \"/run/t.sock\"\n"]).unwrap();
        assert_eq!(c.links.tunnel, Some(PathBuf::from("/run/t.sock")));
        let c =
            load(&["[node]\nrole = \"secondary\"\n[links]\nconnect = \"vsock:2:5000\"\ntls = \"required\"\n"]).unwrap();
        assert_eq!(c.role, Role::Secondary);
        assert_eq!(
            c.links.connect,
            Some(crate::proto::transport::LinkAddr::Vsock { cid: 2, port: 5000 })
        );
        for (text, key, reason) in [
            (
                "[node]\nrole = \"secondary\"\n[links]\nlisten = [\"vsock:1\"]\n",
                "links.listen",
                "only the main node",
            ),
            (
                "[links]\nconnect = \"stdio\"\n",
                "links.connect",
                "only a secondary node",
            ),
            (
                "[links]\nlisten = [\"tcp:0.0.0.0:1\"]\ntls = \"off\"\n",
                "links.tls",
                "always use TLS",
            ),
            ("[links]\nlisten = [\"udp:1\"]\n", "links.listen[0]", "is not one of"),
            (
                "[links]\nlisten = [\"vsock:1\", \"vsock:1\"]\n",
                "links.listen[1]",
                "listed twice",
            ),
            (
                "[links]\nlisten = [\"vsock:1\"]\nidentity = \"nope\"\n",
                "links.identity",
                "names no certificate module",
            ),
            (
                "[links]\nrequest_timeout = 0\n",
                "links.request_timeout",
                "at least 1 second",
            ),
            ("[node]\nrole = \"leader\"\n", "node.role", "not one of main, secondary"),
            (
                "[links]\ntunnel = \"/run/t.sock\"\n",
                "links.tunnel",
                "only a secondary node",
            ),
            (
                "[node]\nrole = \"secondary\"\n[links]\ntunnel_endpoints = [\"est:443\"]\n",
                "links.tunnel_endpoints[0]",
                "only the main node carries tunnels",
            ),
            (
                "[links]\ntunnel_endpoints = [\"est:443\", \"EST:443\"]\n",
                "links.tunnel_endpoints[1]",
                "listed twice",
            ),
            (
                "[links]\ntunnel_endpoints = [\"https://est:443\"]\n",
                "links.tunnel_endpoints[0]",
                "is not a host name",
            ),
        ] {
            let e = load(&[text]).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }
}
