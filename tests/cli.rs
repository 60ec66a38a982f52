//! The binary as users meet it: argv[0] dispatch, `aos-iam APPLET`, `--list`, unknown names,
//! and `iamd --check-config` naming the file, key and reason of a bad configuration.

mod common;
use common::*;
use std::process::Command;

#[test]
fn aos_iam_lists_its_applets() {
    let out = run(Command::new(bin()).arg("--list"), None).ok();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["iamd", "iam-provision", "iam-certctl", "iam-nodelink"]
    );
    run(Command::new(bin()).arg("--version"), None).ok();
    run(&mut Command::new(bin()), None).fails(2, "Usage: aos-iam APPLET");
}

#[test]
fn applets_are_reached_by_link_name_or_as_first_argument() {
    let dir = std::env::temp_dir().join(format!("aos-iam-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["iamd", "iam-provision", "iam-certctl", "iam-nodelink", "iam-bogus"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    }
    let out = run(Command::new(dir.join("iamd")).arg("--version"), None).ok();
    assert!(out.stdout.starts_with("iamd "), "{}", out.stdout);
    let out = run(Command::new(dir.join("iam-provision")).arg("--help"), None).ok();
    assert!(
        out.stdout.contains("run") && out.stdout.contains("create-key"),
        "{}",
        out.stdout
    );
    let out = run(Command::new(dir.join("iam-certctl")).arg("--help"), None).ok();
    assert!(
        out.stdout.contains("list") && out.stdout.contains("get"),
        "{}",
        out.stdout
    );
    let out = run(Command::new(dir.join("iam-nodelink")).arg("--help"), None).ok();
    assert!(
        out.stdout.contains("status") && out.stdout.contains("--connect"),
        "{}",
        out.stdout
    );
    run(
        Command::new(dir.join("iam-nodelink")).args(["--connect", "udp:1:2"]),
        None,
    )
    .fails(
        7,
        "--connect \"udp:1:2\" is not one of unix:PATH, vsock:CID:PORT, vchan:DOMID:PATH, tcp:HOST:PORT, stdio",
    );
    run(&mut Command::new(dir.join("iam-bogus")), None).fails(2, "unknown applet \"iam-bogus\"");
    run(Command::new(bin()).args(["iam-certctl", "--help"]), None).ok();
    run(Command::new(bin()).arg("bogus"), None).fails(2, "unknown applet \"bogus\"");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_without_iamd_says_so() {
    run(
        Command::new(bin()).args(["iam-provision", "-s", "/nonexistent/iam.sock", "status"]),
        None,
    )
    .fails(3, "is iamd running?");
    let out = run(
        Command::new(bin()).args(["iam-certctl", "-s", "/nonexistent/iam.sock", "--json", "get", "iam"]),
        None,
    );
    assert_eq!(out.code, 3);
    assert_eq!(out.json()["error"]["kind"], "unavailable");
}

#[test]
fn check_config_names_file_key_and_reason() {
    let node = Node::new("config", Store::Software);
    node.write_config();
    let cfg = node.p("config.toml");
    let check = |expect: i32| {
        let out = run(node.cmd().args(["iamd", "-c", &cfg, "--check-config"]), None);
        assert_eq!(out.code, expect, "{}{}", out.stdout, out.stderr);
        out
    };
    check(0);

    std::fs::write(
        &cfg,
        node.config_text().replace("[paths]\n", "[paths]\ncolour = \"blue\"\n"),
    )
    .unwrap();
    let out = check(1);
    // The file, the line of the key in it, the key, the reason.
    let line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("colour ="))
        .unwrap()
        + 1;
    assert!(
        out.stderr.contains(&format!("{cfg}:{line}: paths.colour: unknown key")),
        "{}",
        out.stderr
    );

    node.write_config();
    std::fs::create_dir_all(node.path("config.d")).unwrap();
    std::fs::write(
        node.path("config.d/50-extra.toml"),
        "[[modules]]\nid = \"sm\"\nstore = \"software\"\nalgorithm = \"dsa\"\n",
    )
    .unwrap();
    let out = check(1);
    assert!(
        out.stderr
            .contains("config.d/50-extra.toml:4: modules[3].algorithm: \"dsa\" is not one of"),
        "{}",
        out.stderr
    );

    std::fs::write(
        node.path("config.d/50-extra.toml"),
        "[[modules]]\nid = \"sm\"\nstore = \"software\"\n",
    )
    .unwrap();
    let out = check(0);
    assert!(out.stdout.contains("4 certificate modules"), "{}", out.stdout);

    std::fs::write(&cfg, "[paths]\nworking_dir = \"/tmp\"\n").unwrap();
    let out = check(1);
    assert!(out.stderr.contains("node: is required"), "{}", out.stderr);

    // iamd itself refuses to start on a bad configuration, saying why.
    std::fs::write(&cfg, "[node\n").unwrap();
    let out = run(node.cmd().args(["iamd", "-c", &cfg]), None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("<3>configuration: ") && out.stderr.contains("not valid TOML"),
        "{}",
        out.stderr
    );
}

#[test]
fn iamd_stops_cleanly_on_sigterm_and_removes_its_sockets() {
    let mut node = Node::new("sigterm", Store::Software);
    node.start(false);
    assert!(node.stop().success());
    assert!(!node.path("run/public.sock").exists() && !node.path("run/protected.sock").exists());
    assert!(node.log().contains("<5>SIGTERM: stopping"), "{}", node.log());
    // A stale socket left by a killed iamd is replaced; a live one is not.
    node.start(false);
    node.kill9();
    assert!(node.path("run/public.sock").exists());
    node.start(false);
    let second = run(node.cmd().args(["iamd", "-c", &node.p("config.toml")]), None);
    assert_eq!(second.code, 3, "{}", second.stderr);
    assert!(second.stderr.contains("another iamd?"), "{}", second.stderr);
    assert!(
        node.path("run/protected.sock").exists(),
        "the running iamd keeps its sockets"
    );
}

#[test]
fn iamd_tells_systemd_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let mut node = Node::new("notify", Store::Software);
    let sock_path = node.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    node.write_config();
    let mut cmd = node.cmd();
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .args(["iamd", "-c", &node.p("config.toml")]);
    let child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    node.iamd = Some(child);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        std::os::unix::net::UnixStream::connect(node.protected()).is_ok(),
        "sockets are up before READY=1"
    );
    node.stop();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn a_password_typed_on_a_terminal_is_not_echoed_and_ends_at_enter() {
    let mut node = Node::new("tty", Store::Software);
    node.start(true);
    let pty = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/on_a_terminal.py");
    let bin = bin();
    let out = run(
        Command::new("python3")
            .args([pty, "provisioning password: "])
            .arg(&bin)
            .args(["iam-provision", "-s", &node.protected(), "start"]),
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(out.code, 0, "the screen:\n{}", out.stdout);
    assert!(out.stdout.contains("provisioning password: "), "{}", out.stdout);
    assert!(
        !out.stdout.contains(PASSWORD),
        "the password was echoed:\n{}",
        out.stdout
    );
    assert_eq!(node.status()["state"], "provisioning");
    // From a pipe, as before: everything up to end of file.
    node.provision_stdin(&["finish"], PASSWORD)
        .fails(5, "no certificate applied yet");
}

#[test]
fn check_with_iamd_unreachable_is_unknown_on_stdout_as_a_monitoring_plugin_says() {
    let out = run(
        Command::new(bin()).args(["iam-certctl", "-s", "/nonexistent/iam.sock", "check"]),
        None,
    );
    assert_eq!(out.code, 3);
    assert!(out.stdout.starts_with("IAM UNKNOWN - "), "{}", out.stdout);
    assert!(out.stdout.contains("/nonexistent/iam.sock"), "{}", out.stdout);
    let out = run(
        Command::new(bin()).args(["iam-certctl", "-s", "/nonexistent/iam.sock", "--json", "check"]),
        None,
    );
    assert_eq!(out.code, 3);
    assert_eq!(out.json()["status"], "UNKNOWN");
}

#[test]
fn every_applet_answers_version_and_takes_its_options_after_the_verb_too() {
    for applet in ["iamd", "iam-provision", "iam-certctl", "iam-nodelink"] {
        let out = run(Command::new(bin()).args([applet, "--version"]), None).ok();
        assert!(
            out.stdout.starts_with(&format!("{applet} {}", aos_iam::VERSION)),
            "{applet}: {}",
            out.stdout
        );
    }
    let mut node = Node::new("after", Store::Software);
    node.start(true);
    let public = node.public();
    let before = run(
        node.cmd()
            .args(["iam-certctl", "-s", &public, "--json", "get", "diskencryption"]),
        None,
    );
    let after = run(
        node.cmd()
            .args(["iam-certctl", "get", "diskencryption", "--json", "-s", &public]),
        None,
    );
    assert_eq!((after.code, after.json()), (before.code, before.json()));
    let status = node
        .applet("iam-provision", &["status", "--json", "-s", &node.protected()], None)
        .ok();
    assert_eq!(status.json()["state"], "unprovisioned");
}

#[test]
fn an_iamd_that_never_answers_makes_check_unknown_within_the_client_timeout() {
    // A socket that accepts and then says nothing, as a hung iamd would.
    let dir = std::env::temp_dir().join(format!("aos-iam-t-silent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let t = std::time::Instant::now();
    let out = run(
        Command::new(bin()).args(["iam-certctl", "-s", &path.display().to_string(), "check"]),
        None,
    );
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("IAM UNKNOWN - no answer from iamd to Hello within 10 s"),
        "{}",
        out.stdout
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "{:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
