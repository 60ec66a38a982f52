//! Permission secrets over the real sockets: RegisterInstance on the protected socket,
//! GetPermissions on the public one, through the applets and the library client.

mod common;
use aos_iam::proto::client::Client;
use aos_iam::proto::wire::{InstanceIdent, InstanceKind, ServerPermissions};
use aos_iam::secret::Secret;
use common::*;

fn instance(n: u64) -> InstanceIdent {
    InstanceIdent {
        item_id: "service-a".into(),
        subject_id: "subject-1".into(),
        instance: n,
        kind: InstanceKind::Service,
    }
}

fn perms(server: &str, entries: &[(&str, &str)]) -> Vec<ServerPermissions> {
    vec![ServerPermissions {
        server: server.into(),
        entries: entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }]
}

/// `register-instance IDENT... --permission P...`, as text output.
fn register(node: &Node, ident: &[&str], permissions: &[&str]) -> Out {
    node.provision(&register_args(ident, permissions))
}

fn register_args<'a>(ident: &[&'a str], permissions: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["register-instance"];
    args.extend_from_slice(ident);
    for p in permissions {
        args.extend(["--permission", p]);
    }
    args
}

const B: &[&str] = &[
    "--item",
    "svc-b",
    "--subject",
    "s",
    "--instance",
    "3",
    "--type",
    "component",
];
const X: &[&str] = &["--item", "x", "--subject", "s", "--instance", "1"];

fn register_b(node: &Node, permissions: &[&str]) -> Out {
    let mut args = vec!["--json"];
    args.extend(register_args(B, permissions));
    node.provision(&args)
}

fn unregister_b(node: &Node) -> Out {
    node.provision(&[
        "unregister-instance",
        "--item",
        "svc-b",
        "--subject",
        "s",
        "--instance",
        "3",
        "--type",
        "component",
    ])
}

fn get_permissions(node: &Node, secret: &str, server: &str) -> Out {
    node.applet(
        "iam-certctl",
        &["-s", &node.public(), "--json", "permissions", server],
        Some(secret),
    )
}

#[test]
fn secrets_are_unique_url_safe_revocable_and_never_logged() {
    let mut node = Node::new("perm", Store::Software);
    node.extra_config = "\n[permissions]\nmax_instances = 10000\n".into();
    node.start(false);

    // 10 000 registrations through the protected socket.
    let mut c = Client::connect(node.protected().as_ref()).unwrap();
    let mut seen = std::collections::HashSet::new();
    for n in 0..10_000 {
        let s = c
            .register_instance(instance(n), perms("vis", &[("read", "yes")]))
            .unwrap();
        let s = s.expose();
        assert_eq!(s.len(), 32, "24 random bytes, base64url");
        assert!(
            s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{s}"
        );
        assert!(seen.insert(s.to_string()), "secret repeated");
    }
    let over = c.register_instance(instance(10_000), perms("vis", &[])).unwrap_err();
    assert!(over.message.contains("most allowed"), "{over}");
    c.unregister_instance(instance(0)).unwrap();

    // The applets: register, look up, re-register, unregister.
    let reg = register_b(&node, &["vis:read=yes", "vis:write=no", "db:role=reader"])
        .ok()
        .json();
    let secret = reg["secret"].as_str().unwrap().to_string();
    let got = get_permissions(&node, &secret, "vis").ok().json();
    assert_eq!(
        got["instance"],
        serde_json::json!({"item": "svc-b", "subject": "s", "instance": 3, "type": "component"})
    );
    assert_eq!(got["permissions"], serde_json::json!({"read": "yes", "write": "no"}));
    assert_eq!(
        get_permissions(&node, &secret, "db").ok().json()["permissions"]["role"],
        "reader"
    );
    get_permissions(&node, &secret, "unknown-server").fails(6, "no permissions for this secret and functional server");
    get_permissions(&node, "Xb3-not-a-registered-secret-at-all", "vis").fails(6, "no permissions for this secret");

    let again = register_b(&node, &["vis:read=no"]).ok().json();
    assert_eq!(again["secret"], secret.as_str(), "re-registering keeps the secret");
    assert_eq!(
        get_permissions(&node, &secret, "vis").ok().json()["permissions"],
        serde_json::json!({"read": "no"})
    );
    get_permissions(&node, &secret, "db").fails(6, "no permissions");

    unregister_b(&node).ok();
    get_permissions(&node, &secret, "vis").fails(6, "no permissions");
    unregister_b(&node).fails(6, "is not registered");

    // Bounds and bad input.
    let many: Vec<String> = (0..65).map(|i| format!("s{i}:a=b")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    register(&node, X, &many).fails(10, "65 functional servers, at most 64 allowed");
    let long = format!("vis:read={}", "v".repeat(300));
    register(&node, X, &[&long]).fails(10, "permission value is 300 bytes, at most 256 allowed");
    register(&node, X, &["vis:a=1", "vis:a=2"]).fails(7, "permission \"a\" of server \"vis\" is given twice");
    register(&node, X, &["novalue"]).fails(7, "expected SERVER:NAME=VALUE");

    // Not on the public socket, and not for users the protected socket does not admit.
    let public = node.public();
    let mut args = vec!["-s", public.as_str()];
    args.extend(register_args(X, &[]));
    node.applet("iam-provision", &args, None)
        .fails(4, "protected socket only");

    // No secret in the log, at the most verbose level.
    let log = node.log();
    assert!(!log.contains(&secret), "a secret reached the log");
    assert!(seen.iter().take(100).all(|s| !log.contains(s.as_str())));
}

#[test]
fn register_instance_from_a_user_not_admitted_is_refused() {
    require_root();
    let mut node = Node::new("perm-uid", Store::Software);
    node.start(false);
    node.stop();
    let cfg = node
        .config_text()
        .replace("[paths]\n", "[paths]\nprotected_socket_mode = \"0666\"\n");
    std::fs::write(node.path("config.toml"), cfg).unwrap();
    let mut cmd = node.cmd();
    cmd.args(["iamd", "-c", &node.p("config.toml")])
        .stderr(std::process::Stdio::null());
    node.iamd = Some(cmd.spawn().unwrap());
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(node.protected()).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    sh(&format!("chmod 0755 {}", node.p("run"))).ok();
    as_nobody(
        &node,
        &[
            "iam-provision",
            "-s",
            &node.protected(),
            "register-instance",
            "--item",
            "x",
            "--subject",
            "s",
            "--instance",
            "1",
        ],
    )
    .fails(4, "uid 65534 gid 65534 is not allowed");
}

#[test]
fn registrations_survive_a_restart_only_when_configured_to_persist() {
    let mut node = Node::new("persist", Store::Software);
    node.start(false);
    let secret = Client::connect(node.protected().as_ref())
        .unwrap()
        .register_instance(instance(1), perms("vis", &[("r", "1")]))
        .unwrap();
    node.stop();
    node.start(false);
    get_permissions(&node, secret.expose(), "vis").fails(6, "no permissions");
    node.stop();

    node.extra_config = "\n[permissions]\npersist = true\n".into();
    node.start(false);
    let secret: Secret = Client::connect(node.protected().as_ref())
        .unwrap()
        .register_instance(instance(1), perms("vis", &[("r", "1")]))
        .unwrap();
    node.stop();
    node.start(false);
    assert_eq!(
        get_permissions(&node, secret.expose(), "vis").ok().json()["permissions"]["r"],
        "1"
    );
    node.stop();

    // Turning persistence off removes what was kept.
    node.extra_config.clear();
    node.start(false);
    node.stop();
    node.extra_config = "\n[permissions]\npersist = true\n".into();
    node.start(false);
    get_permissions(&node, secret.expose(), "vis").fails(6, "no permissions");
}
