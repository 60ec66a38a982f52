//! A software TPM 2.0 as the node's token: swtpm behind tpm2-abrmd (a resource manager on a
//! private D-Bus session, as a real TPM has /dev/tpmrm0) and the tpm2-pkcs11 module. The real
//! binary provisions a node whose keys (P-256, P-384, RSA-2048) are made in the TPM,
//! renews one, and provisions it again (a token tpm2-pkcs11 cannot initialise twice, emptied
//! under its SO PIN). Judges: openssl verify on the certificates p11tool exports, and
//! pkcs11-tool for the token's objects (OpenSSL's pkcs11 engine cannot use tpm2-pkcs11 keys
//! on Debian 12).

mod common;
use common::est::EstServer;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TPM2_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

/// swtpm, a D-Bus session and tpm2-abrmd on it, for one node; stopped when dropped.
struct Tpm {
    children: Vec<Child>,
    env: Vec<(String, String)>,
}

impl Tpm {
    fn start(node: &Node) -> Tpm {
        let state = node.path("tpm-state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(node.path("tpm-store")).unwrap();
        // The swtpm TCTI finds the control channel on the port after the server's.
        let server = loop {
            let p = EstServer::free_port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let ctrl = server + 1;
        let swtpm = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .args(["--server", &format!("type=tcp,port={server},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm (Debian package swtpm)");
        // tpm2-abrmd gives up if the TPM is not there yet.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", server)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "swtpm did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut dbus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus)");
        let mut address = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(dbus.stdout.take().unwrap()), &mut address).unwrap();
        let address = address.trim().to_string();
        let tcti = format!("swtpm:host=127.0.0.1,port={server}");
        let abrmd_bin = match std::path::Path::new("/usr/sbin/tpm2-abrmd").exists() {
            true => "/usr/sbin/tpm2-abrmd",
            false => "tpm2-abrmd",
        };
        let abrmd = Command::new(abrmd_bin)
            .args(["--session", "--allow-root", &format!("--tcti={tcti}")])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(node.path("tpm2-abrmd.log")).unwrap())
            .spawn()
            .expect("tpm2-abrmd (Debian package tpm2-abrmd)");
        let env = vec![
            ("DBUS_SESSION_BUS_ADDRESS".to_string(), address),
            ("TPM2_PKCS11_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2TOOLS_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2_PKCS11_STORE".into(), node.p("tpm-store")),
        ];
        let tpm = Tpm {
            children: vec![swtpm, dbus, abrmd],
            env,
        };
        // Ready once the TPM answers through the resource manager.
        let start = Instant::now();
        loop {
            let ok = Command::new("tpm2_getcap")
                .arg("properties-fixed")
                .envs(tpm.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return tpm;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the software TPM did not come up: {}",
                std::fs::read_to_string(node.path("tpm2-abrmd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node whose modules all live in the TPM's token.
fn tpm_node(name: &str) -> (Node, Tpm) {
    let mut node = Node::new(name, Store::Pkcs11);
    let tpm = Tpm::start(&node);
    node.env = tpm.env.clone();
    let d = node.dir.display();
    let store = format!(
        "[modules.pkcs11]\nlibrary = \"{TPM2_PKCS11}\"\nslot_index = 0\ninit_label = \"aos-tpm\"\nuser_pin_file = \"{d}/work/user-pin\"\n"
    );
    let mut c = format!(
        "[node]\nid_file = \"{d}/node-id\"\n[paths]\nworking_dir = \"{d}/work\"\nroot_ca = \"{d}/ca.pem\"\n\
         public_socket = \"{d}/run/public.sock\"\nprotected_socket = \"{d}/run/protected.sock\"\n"
    );
    for (id, alg, eku, self_signed) in [
        ("iam", "ecdsa-p384", r#"["clientAuth", "serverAuth"]"#, false),
        ("online", "ecdsa-p256", r#"["clientAuth"]"#, false),
        ("offline", "rsa-2048", r#"["clientAuth"]"#, false),
        ("diskencryption", "ecdsa-p256", "[]", true),
    ] {
        c.push_str(&format!(
            "\n[[modules]]\nid = \"{id}\"\nalgorithm = \"{alg}\"\nextended_key_usage = {eku}\nself_signed = {self_signed}\nmax_items = 2\n{store}"
        ));
    }
    node.config_override = Some(c);
    (node, tpm)
}

/// The objects on the TPM's token, by class, as pkcs11-tool lists them.
fn objects(node: &Node) -> Vec<String> {
    let pin = node.user_pin();
    let out = run(
        node.cmd_for("pkcs11-tool").args([
            "--module",
            TPM2_PKCS11,
            "--slot-index",
            "0",
            "--login",
            "--pin",
            pin.trim(),
            "-O",
        ]),
        None,
    )
    .ok();
    out.stdout
        .lines()
        .filter(|l| l.contains(" Object;"))
        .map(String::from)
        .collect()
}

/// Each current certificate, exported by p11tool from its URL, verifies with openssl.
fn verifies(node: &Node) {
    for c in node.list_certs() {
        let t = c["type"].as_str().unwrap();
        let out = node.p(&format!("{t}.pem"));
        let o = run(
            node.cmd_for("p11tool")
                .args(["--provider", TPM2_PKCS11, "--export", c["cert_url"].as_str().unwrap()]),
            None,
        )
        .ok();
        std::fs::write(&out, o.stdout).unwrap();
        let root = if t == "diskencryption" {
            out.clone()
        } else {
            node.p("ca.pem")
        };
        sh(&format!("openssl verify -CAfile {root} {out}")).ok();
    }
}

#[test]
fn a_node_is_provisioned_renewed_and_provisioned_again_in_a_software_tpm() {
    let (mut node, _tpm) = tpm_node("tpm");
    node.start(true);
    node.run_flow().ok();
    let status = node.status();
    assert_eq!(status["state"], "provisioned", "{status}");
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
    verifies(&node);
    // Three objects per certificate (key pair and certificate), nothing else.
    assert_eq!(objects(&node).len(), 3 * 4, "{:#?}", objects(&node));

    // A renewal of the RSA key: a new key in the TPM, the old one kept (max_items 2).
    let pw = node.p("password");
    let (ca, key) = (node.p("ca.pem"), node.p("ca.key"));
    node.applet(
        "iam-certctl",
        &[
            "-s",
            &node.protected(),
            "renew",
            "offline",
            "--ca-cert",
            &ca,
            "--ca-key",
            &key,
            "--password-file",
            &pw,
        ],
        None,
    )
    .ok();
    assert_eq!(node.list_certs().iter().filter(|c| c["type"] == "offline").count(), 2);
    assert_eq!(objects(&node).len(), 3 * 5);
    verifies(&node);

    // Provisioned again: tpm2-pkcs11 cannot initialise the token twice, so it is emptied
    // under its SO PIN, and only the new objects are there.
    node.run_flow_with(&["--deprovision-first"]).ok();
    assert!(
        node.log()
            .contains("cannot be initialised again; emptying it under its SO PIN"),
        "{}",
        node.log()
    );
    assert_eq!(objects(&node).len(), 3 * 4, "{:#?}", objects(&node));
    verifies(&node);
    // And it serves the same after a restart out of provisioning mode.
    node.stop();
    node.start(false);
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
}
