//! Test harness: a node in a temporary directory with its own SoftHSM token, an openssl
//! root CA, an iamd configuration, and the real `aos-iam` binary run over its real sockets.
#![allow(dead_code)]

pub mod attack;
pub mod enrollment;
pub mod est;
pub mod scep;
pub mod tpm;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PASSWORD: &str = "factory-secret";
pub const TOKEN: &str = "aos-test";

/// A SoftHSM token directory `DIR/tokens` and its configuration `DIR/softhsm2.conf`.
pub fn softhsm_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.display()
        ),
    )
    .unwrap();
    conf
}

/// The binary under test: this build's, or `AOS_IAM_UNDER_TEST` where it is set (a benchmark
/// can so measure another build beside this one; it must speak this build's protocol and
/// answer its applets as this build does).
pub fn bin() -> PathBuf {
    std::env::var_os("AOS_IAM_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aos-iam")))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    Pkcs11,
    Software,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    /// Failed with `code`, and the message (stderr, or the JSON error) contains `text`.
    #[track_caller]
    pub fn fails(self, code: i32, text: &str) -> Out {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let all = format!("{}{}", self.stdout, self.stderr);
        assert!(all.contains(text), "expected {text:?} in:\n{all}");
        self
    }
}

pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Out {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = si.write_all(input.as_bytes());
        });
    }
    Out::from(child.wait_with_output().unwrap())
}

pub fn sh(script: &str) -> Out {
    run(Command::new("sh").arg("-c").arg(script), None)
}

pub struct Node {
    pub dir: PathBuf,
    pub store: Store,
    pub iamd: Option<Child>,
    /// Extra TOML appended to the generated configuration.
    pub extra_config: String,
    /// Extra keys of its `[node]` table (`role = "secondary"`).
    pub node_extra: String,
    /// Extra keys of its `[paths]` table (`allowed_uids = [65534]`).
    pub paths_extra: String,
    /// Modules in the generated configuration: (id, algorithm, EKUs, self_signed, max_items).
    pub modules: Vec<(&'static str, &'static str, &'static str, bool, u32)>,
    /// The aos-iam binary this node runs: [`bin`], or another build (tests/upgrade.rs).
    pub bin: PathBuf,
    /// A whole configuration in place of the generated one (a fixture's).
    pub config_override: Option<String>,
    /// Environment of every process run for the node (a TPM's TCTI).
    pub env: Vec<(String, String)>,
    /// The CA (`NAME.pem`/`NAME.key` in the node's directory) that `run_flow*` signs with:
    /// the root `ca`, or an issuing CA under it.
    pub signing_ca: String,
    /// Its daemons (iamd, iam-nodelink) run in a network namespace of their own, with no
    /// route at all (`unshare -n`): a secondary with no network, its sockets on disk alone.
    pub netns: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Node {
    pub fn new(name: &str, store: Store) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "aos-iam-t-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["work", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        softhsm_dir(&dir);
        std::fs::write(dir.join("node-id"), format!("node-{name}\n")).unwrap();
        std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
        let node = Node {
            dir,
            store,
            iamd: None,
            extra_config: String::new(),
            node_extra: String::new(),
            paths_extra: String::new(),
            modules: vec![
                ("iam", "ecdsa-p384", r#"["clientAuth", "serverAuth"]"#, false, 2),
                ("online", "ecdsa-p256", r#"["clientAuth"]"#, false, 2),
                ("diskencryption", "ecdsa-p384", "[]", true, 1),
            ],
            bin: bin(),
            config_override: None,
            env: Vec::new(),
            signing_ca: "ca".into(),
            netns: false,
        };
        node.make_ca("ca");
        node
    }

    /// A node provisioned by `run`, then restarted out of provisioning mode.
    pub fn provisioned(name: &str) -> Node {
        let mut node = Node::new(name, Store::Pkcs11);
        node.start(true);
        node.run_flow().ok();
        node.stop();
        node.start(false);
        node
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
    pub fn p(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }
    pub fn node_id(&self) -> String {
        std::fs::read_to_string(self.path("node-id"))
            .unwrap()
            .trim()
            .to_string()
    }
    pub fn protected(&self) -> String {
        self.p("run/protected.sock")
    }
    pub fn public(&self) -> String {
        self.p("run/public.sock")
    }

    /// A root CA `NAME.pem` / `NAME.key` (EC P-384), made by openssl.
    pub fn make_ca(&self, name: &str) {
        sh(&format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 365 \
             -keyout {d}/{name}.key -out {d}/{name}.pem -subj '/O=aos-iam tests/CN={name}' \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            d = self.dir.display()
        ))
        .ok();
    }

    pub fn config_text(&self) -> String {
        if let Some(c) = &self.config_override {
            return c.clone();
        }
        let d = self.dir.display();
        let mut c = format!(
            "[node]\nid_file = \"{d}/node-id\"\nname = \"test node\"\n{}\n[paths]\nworking_dir = \"{d}/work\"\nroot_ca = \"{d}/ca.pem\"\n\
             public_socket = \"{d}/run/public.sock\"\nprotected_socket = \"{d}/run/protected.sock\"\n{}\n",
            self.node_extra, self.paths_extra
        );
        for (id, alg, eku, self_signed, max) in &self.modules {
            c.push_str(&format!(
                "\n[[modules]]\nid = \"{id}\"\nalgorithm = \"{alg}\"\nextended_key_usage = {eku}\nself_signed = {self_signed}\nmax_items = {max}\n"
            ));
            match self.store {
                Store::Pkcs11 => c.push_str(&format!(
                    "[modules.pkcs11]\nlibrary = \"{SOFTHSM}\"\ntoken_label = \"{TOKEN}\"\nuser_pin_file = \"{d}/work/user-pin\"\n"
                )),
                Store::Software => c.push_str(&format!("store = \"software\"\n[modules.software]\ndir = \"{d}/work/keys\"\n")),
            }
        }
        c.push_str(&self.extra_config);
        c
    }

    pub fn write_config(&self) {
        std::fs::write(self.path("config.toml"), self.config_text()).unwrap();
    }

    /// The command of one of its daemons: [`Node::cmd`], in a network namespace of its own
    /// when the node has no network ([`Node::netns`]).
    pub fn daemon_cmd(&self) -> Command {
        if !self.netns {
            return self.cmd();
        }
        let mut c = Command::new("unshare");
        c.arg("-n").arg("--").arg(&self.bin);
        c.env("SOFTHSM2_CONF", self.path("softhsm2.conf"));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("SOFTHSM2_CONF", self.path("softhsm2.conf"));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Start iamd and wait until it serves: its protected socket answers and it has logged
    /// that it serves (which it does once every socket, link listeners included, listens) and
    /// that its start-up recovery is done.
    pub fn start(&mut self, provisioning: bool) {
        self.write_config();
        // Serving, and its start-up recovery (trash, reconciliation) done: it runs once
        // iamd listens, and what the tests check next may depend on it.
        // (An earlier release's binary, tests/upgrade.rs, recovered before it served.)
        let current = self.bin == bin();
        let served = |n: &Node| {
            let log = n.log();
            let serving = log.matches(" serving node \"").count();
            match current {
                true => serving.min(log.matches("start-up recovery done").count()),
                false => serving,
            }
        };
        let before = served(self);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("iamd.log"))
            .unwrap();
        let mut cmd = self.daemon_cmd();
        cmd.args(["iamd", "-c", &self.p("config.toml"), "-vv"]);
        if provisioning {
            cmd.arg("--provisioning");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !(self.path("run/protected.sock").exists()
            && std::os::unix::net::UnixStream::connect(self.path("run/protected.sock")).is_ok()
            && served(self) > before)
        {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("iamd exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "iamd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(self.path("iamd.pid"), child.id().to_string()).unwrap();
        self.iamd = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("iamd.log")).unwrap_or_default()
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.iamd.take().expect("iamd running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.iamd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for an iamd killed from outside (e.g. by a hook) to be reaped.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.iamd.take() {
            let _ = child.wait();
        }
    }

    pub fn applet(&self, applet: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = self.cmd();
        c.arg(applet).args(args);
        run(&mut c, stdin)
    }

    /// `iam-provision -s PROTECTED ARGS...`
    pub fn provision(&self, args: &[&str]) -> Out {
        let mut all = vec!["-s".to_string(), self.protected()];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.applet("iam-provision", &refs, None)
    }

    pub fn provision_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut all = vec!["-s".to_string(), self.protected()];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.applet("iam-provision", &refs, Some(stdin))
    }

    /// `iam-certctl --json renew TYPE` on the protected socket, signed by the node's own CA
    /// (`ca.pem`, `ca.key`) for `days` (the CA's default if `None`), with its password.
    pub fn renew_with_ca(&self, cert_type: &str, days: Option<&str>) -> Out {
        let (socket, ca, key, pw) = (self.protected(), self.p("ca.pem"), self.p("ca.key"), self.p("password"));
        let mut args = vec![
            "-s",
            &socket,
            "--json",
            "renew",
            cert_type,
            "--ca-cert",
            &ca,
            "--ca-key",
            &key,
        ];
        if let Some(d) = days {
            args.extend(["--days", d]);
        }
        args.extend(["--password-file", &pw]);
        self.applet("iam-certctl", &args, None)
    }

    /// `iam-provision --json run` with the node's CA, its password file and `extra` options.
    pub fn run_flow_with(&self, extra: &[&str]) -> Out {
        self.run_flow_on(None, extra)
    }

    /// The same for `--node NODE` (`all` for a whole unit).
    pub fn run_flow_on(&self, node: Option<&str>, extra: &[&str]) -> Out {
        let args = self.run_flow_args(node, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.provision(&refs)
    }

    /// The arguments of `run_flow_on`, after `iam-provision -s PROTECTED`.
    pub fn run_flow_args(&self, node: Option<&str>, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = node.map(|n| vec!["--node".into(), n.into()]).unwrap_or_default();
        // An issuing CA signs with the intermediates above it, as a factory station holds it.
        let chain = self.path(&format!("{}-chain.pem", self.signing_ca));
        let cert = match chain.exists() {
            true => chain.display().to_string(),
            false => self.p(&format!("{}.pem", self.signing_ca)),
        };
        for a in [
            "--json",
            "run",
            "--ca-cert",
            &cert,
            "--ca-key",
            &self.p(&format!("{}.key", self.signing_ca)),
        ] {
            args.push(a.into());
        }
        args.extend(["--password-file".into(), self.p("password")]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// An applet started in the background, its output collected, to be killed or waited for.
    pub fn spawn_applet(&self, applet: &str, args: &[String]) -> std::process::Child {
        self.cmd()
            .arg(applet)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn run_flow(&self) -> Out {
        self.run_flow_with(&[])
    }

    /// `iam-certctl --json list` on the protected socket: the certificates.
    pub fn list_certs(&self) -> Vec<serde_json::Value> {
        let out = self
            .applet("iam-certctl", &["-s", &self.protected(), "--json", "list"], None)
            .ok()
            .json();
        out["certificates"].as_array().unwrap().clone()
    }

    pub fn status(&self) -> serde_json::Value {
        self.provision(&["--json", "status"]).ok().json()
    }

    /// Sign a CSR with this node's openssl CA (or another CA of the same directory).
    pub fn openssl_sign(&self, csr_file: &str, ca: &str, out: &str) {
        sh(&format!(
            "openssl x509 -req -in {csr} -CA {d}/{ca}.pem -CAkey {d}/{ca}.key -days 30 -copy_extensions copy -out {out} 2>&1",
            d = self.dir.display(),
            csr = csr_file
        ))
        .ok();
    }

    /// The token's user PIN, as iamd wrote it.
    pub fn user_pin(&self) -> String {
        std::fs::read_to_string(self.path("work/user-pin")).unwrap()
    }

    /// pkcs11-tool on the node's token, logged in with iamd's user PIN.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Out {
        let pin = self.user_pin();
        let mut cmd = self.cmd_for("pkcs11-tool");
        cmd.args([
            "--module",
            SOFTHSM,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            pin.trim(),
        ])
        .args(args);
        run(&mut cmd, None).ok()
    }

    /// Plant an EC key pair labelled `label` with CKA_ID `id_hex` on the token, behind
    /// iamd's back (pkcs11-tool).
    pub fn plant_key(&self, label: &str, id_hex: &str) {
        self.pkcs11_tool(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
            "--id",
            id_hex,
        ]);
    }

    /// Whether the token takes `so_pin` as its SO PIN: an SO login proven by setting the user
    /// PIN to the value it has (pkcs11-tool's exit code).
    pub fn so_login(&self, so_pin: &str) -> i32 {
        let user_pin = self.user_pin();
        let args = [
            "--module",
            SOFTHSM,
            "--token-label",
            TOKEN,
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            so_pin,
        ];
        run(
            self.cmd_for("pkcs11-tool")
                .args(args)
                .args(["--init-pin", "--new-pin", user_pin.trim()]),
            None,
        )
        .code
    }

    /// Objects on the token, by pkcs11-tool: (kind, label, id hex, access).
    pub fn token_objects(&self) -> Vec<(String, String, String, String)> {
        let out = self.pkcs11_tool(&["-O"]);
        let mut objs = Vec::new();
        let mut cur: Option<(String, String, String, String)> = None;
        for line in out.stdout.lines() {
            // "Certificate Object; ...", "Private Key Object; ...", "Data object 2".
            let kind = match line.split_once(" Object") {
                Some((kind, _)) => Some(kind),
                None => line.starts_with("Data object").then_some("Data"),
            };
            if let Some(kind) = kind {
                if let Some(c) = cur.take() {
                    objs.push(c);
                }
                cur = Some((kind.trim().to_string(), String::new(), String::new(), String::new()));
            } else if let Some(c) = cur.as_mut() {
                let l = line.trim();
                if let Some(v) = l.strip_prefix("label:") {
                    c.1 = v.trim().to_string();
                } else if let Some(v) = l.strip_prefix("ID:") {
                    c.2 = v.trim().to_string();
                } else if let Some(v) = l.strip_prefix("Access:") {
                    c.3 = v.trim().to_string();
                }
            }
        }
        objs.extend(cur);
        objs.sort();
        objs
    }

    pub fn cmd_for(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", self.path("softhsm2.conf"));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Export the certificate a URL names: p11tool for pkcs11:, the file for file://.
    pub fn export_cert(&self, url: &str, out: &str) {
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::copy(path, out).unwrap();
        } else {
            let o = run(
                self.cmd_for("p11tool").args(["--provider", SOFTHSM, "--export", url]),
                None,
            )
            .ok();
            std::fs::write(out, o.stdout).unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}\niamd log:\n{}", self.dir.display(), self.log());
        }
    }
}

/// Export `cert` (as `iam-certctl --json list` gives it) from the node's store to
/// `TYPE.issued.pem` and have openssl verify it against the root file `ca`, with the
/// intermediates of the file `untrusted` when given; the exported file.
#[track_caller]
pub fn openssl_verify_exported(node: &Node, cert: &serde_json::Value, ca: &str, untrusted: Option<&str>) -> String {
    let out = node.p(&format!("{}.issued.pem", cert["type"].as_str().unwrap()));
    node.export_cert(cert["cert_url"].as_str().unwrap(), &out);
    let untrusted = untrusted.map(|u| format!("-untrusted {u}")).unwrap_or_default();
    let v = sh(&format!("openssl verify -CAfile {ca} {untrusted} {out}")).ok();
    assert!(
        v.stdout.contains(": OK"),
        "{}: {}{}",
        node.node_id(),
        v.stdout,
        v.stderr
    );
    out
}

/// The node's CA `NAME.pem`/`NAME.key` as an openssl CA (`openssl ca`, its database in the
/// node's directory) issuing certificates valid for `seconds` from 10 s ago, as CAs that
/// issue short-lived certificates do. Returns the signing command (CSR on stdin,
/// certificate on stdout, openssl's complaint on stderr when it refuses). While the file
/// `slow` exists it first touches `signing` and takes 4 s; while `hold` exists it waits.
pub fn openssl_ca_command(node: &Node, name: &str, seconds: u32) -> String {
    let d = node.dir.display();
    std::fs::create_dir_all(node.path("newcerts")).unwrap();
    std::fs::write(node.path("index.txt"), "").unwrap();
    std::fs::write(node.path("serial"), "1000\n").unwrap();
    std::fs::write(
        node.path(&format!("{name}.cnf")),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/newcerts\nserial = {d}/serial\n\
             certificate = {d}/{name}.pem\nprivate_key = {d}/{name}.key\ndefault_md = sha384\npolicy = p\ncopy_extensions = copy\n\
             unique_subject = no\nx509_extensions = leaf\n[p]\ncommonName = supplied\norganizationalUnitName = optional\n\
             [leaf]\nbasicConstraints = CA:FALSE\nauthorityKeyIdentifier = keyid\n"
        ),
    )
    .unwrap();
    format!(
        "set -e; if [ -e {d}/slow ]; then touch {d}/signing; sleep 4; fi; while [ -e {d}/hold ]; do sleep 0.1; done; \
         f=$(mktemp -p {d}); cat > $f.csr; \
         openssl ca -batch -config {d}/{name}.cnf -in $f.csr -out $f.pem -notext \
           -startdate $(date -u -d '-10 sec' +%y%m%d%H%M%SZ) -enddate $(date -u -d '+{seconds} sec' +%y%m%d%H%M%SZ) 2>$f.err \
           || {{ cat $f.err >&2; exit 1; }}; cat $f.pem"
    )
}

pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// An intermediate CA `NAME.pem`/`NAME.key` signed by the node's root `ca`.
pub fn make_intermediate(node: &Node, name: &str) {
    make_ca_under(node, name, "ca", Some(0));
}

/// An issuing CA `NAME.pem`/`NAME.key` (EC P-384, made by openssl) signed by the node's CA
/// `parent`, with a path length constraint when given. Its `NAME-chain.pem` holds it and
/// the intermediates above it (not the root), as a factory station keeps its signing CA.
pub fn make_ca_under(node: &Node, name: &str, parent: &str, pathlen: Option<u8>) {
    let d = node.dir.display();
    let pathlen = pathlen.map(|n| format!(",pathlen:{n}")).unwrap_or_default();
    std::fs::write(
        node.path(&format!("{name}.ext")),
        format!("basicConstraints=critical,CA:TRUE{pathlen}\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"),
    )
    .unwrap();
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout {d}/{name}.key -out {d}/{name}.csr \
         -subj '/O=aos-iam tests/CN={name}' && \
         openssl x509 -req -in {d}/{name}.csr -CA {d}/{parent}.pem -CAkey {d}/{parent}.key -days 100 -extfile {d}/{name}.ext -out {d}/{name}.pem"
    ))
    .ok();
    let above = std::fs::read_to_string(node.path(&format!("{parent}-chain.pem"))).unwrap_or_default();
    std::fs::write(
        node.path(&format!("{name}-chain.pem")),
        read(node.path(&format!("{name}.pem"))) + &above,
    )
    .unwrap();
}

/// Sign a CSR with rcgen as the node's CA `ca`, after `adjust` changes the parameters:
/// for certificates openssl will not make (expired, without EKU).
pub fn rcgen_sign(node: &Node, csr_pem: &str, adjust: impl FnOnce(&mut rcgen::CertificateParams)) -> String {
    let ca_key = rcgen::KeyPair::from_pem(&read(node.path("ca.key"))).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(node.path("ca.pem")), &ca_key).unwrap();
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    let now = time::OffsetDateTime::now_utc();
    csr.params.not_before = now - time::Duration::hours(1);
    csr.params.not_after = now + time::Duration::days(30);
    csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42, 7, 7, 7]));
    csr.params.use_authority_key_identifier_extension = true;
    adjust(&mut csr.params);
    csr.signed_by(&issuer).unwrap().pem()
}

/// Run the applet as uid/gid 65534 (nobody) with setpriv; the binary is copied where that
/// user can execute it.
pub fn as_nobody(node: &Node, args: &[&str]) -> Out {
    as_user(node, 65534, 65534, &[], args)
}

/// Run the applet as `uid`, primary group `gid` and supplementary `groups`, with setpriv.
pub fn as_user(node: &Node, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Out {
    require_root();
    let copy = node.path("aos-iam");
    if !copy.exists() {
        std::fs::copy(&node.bin, &copy).unwrap();
        sh(&format!("chmod 0755 {} {}", node.dir.display(), copy.display())).ok();
    }
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={uid}"), format!("--regid={gid}")]);
    match groups {
        [] => c.arg("--clear-groups"),
        g => c.arg(format!(
            "--groups={}",
            g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        )),
    };
    c.arg("--").arg(&copy).args(args);
    run(&mut c, None)
}

/// Tests that act as another local user need root (setpriv, as CI has): without it they
/// fail, saying so, rather than pass having proven nothing.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test runs clients as other users (setpriv) and needs root; run the suite as root"
    );
}

/// A watching applet, its JSON lines delivered on a channel.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Watcher {
    pub fn start(node: &Node, applet: &str, args: &[&str]) -> Watcher {
        let mut cmd = node.cmd();
        cmd.arg(applet).args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    pub fn next(&self) -> serde_json::Value {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("an event within 20 s")
    }

    pub fn nothing_for(&self, d: Duration) {
        if let Ok(v) = self.lines.recv_timeout(d) {
            panic!("unexpected event {v}");
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unit: a main node whose iamd accepts links on `run/link.sock`, and secondary nodes,
/// each with its own SoftHSM token and iamd, all trusting the main node's root CA.
pub struct Unit {
    pub main: Node,
    pub secondaries: Vec<Node>,
    /// Running iam-nodelink processes (or the socat that carries one), by secondary index.
    pub links: Vec<Option<Child>>,
}

impl Unit {
    pub fn new(name: &str, secondaries: usize) -> Unit {
        let mut main = Node::new(&format!("{name}-main"), Store::Pkcs11);
        main.extra_config = format!("\n[links]\nlisten = [\"unix:{}\"]\n", main.p("run/link.sock"));
        let secondaries: Vec<Node> = (0..secondaries)
            .map(|i| {
                let mut n = Node::new(&format!("{name}-s{i}"), Store::Pkcs11);
                n.node_extra = "role = \"secondary\"\n".into();
                for f in ["ca.pem", "ca.key"] {
                    std::fs::copy(main.path(f), n.path(f)).unwrap();
                }
                n
            })
            .collect();
        let links = secondaries.iter().map(|_| None).collect();
        Unit {
            main,
            secondaries,
            links,
        }
    }

    pub fn link_addr(&self) -> String {
        format!("unix:{}", self.main.p("run/link.sock"))
    }

    /// Start every iamd.
    pub fn start(&mut self, provisioning: bool) {
        self.main.start(provisioning);
        for s in &mut self.secondaries {
            s.start(provisioning);
        }
    }

    /// The iam-nodelink command of secondary `i`, dialing `connect`.
    pub fn nodelink_cmd(&self, i: usize, connect: &str) -> Command {
        self.nodelink_cmd_with_status(i, connect, "run/nodelink.status")
    }

    pub fn nodelink_cmd_with_status(&self, i: usize, connect: &str, status: &str) -> Command {
        let s = &self.secondaries[i];
        let mut c = s.daemon_cmd();
        c.args([
            "iam-nodelink",
            "-c",
            &s.p("config.toml"),
            "--connect",
            connect,
            "--status-file",
            &s.p(status),
            "--retry-min-ms",
            "100",
            "--retry-max",
            "1",
            "-vv",
        ]);
        c
    }

    fn spawn_logged(&mut self, i: usize, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.secondaries[i].path("nodelink.log"))
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.links[i] = Some(child);
    }

    /// Link secondary `i` to the main node over `connect` (its log appended to).
    pub fn link_over(&mut self, i: usize, connect: &str) {
        let cmd = self.nodelink_cmd(i, connect);
        self.spawn_logged(i, cmd);
    }

    /// Restart every iamd (in provisioning mode or not) and link every secondary again over
    /// `connect`; wait until the main node counts them connected.
    pub fn relink(&mut self, provisioning: bool, connect: &str) {
        for i in 0..self.secondaries.len() {
            self.kill_link(i);
        }
        self.main.stop();
        for s in &mut self.secondaries {
            s.stop();
        }
        self.start(provisioning);
        for i in 0..self.secondaries.len() {
            self.link_over(i, connect);
        }
        for s in &self.secondaries {
            self.wait_connected(&s.node_id(), true);
        }
    }

    /// Link every secondary over the main node's unix link listener, and wait until the
    /// main node counts each connected.
    pub fn link_all_unix(&mut self) {
        for i in 0..self.secondaries.len() {
            self.link_unix(i);
        }
        for s in &self.secondaries {
            self.wait_connected(&s.node_id(), true);
        }
    }

    /// Link secondary `i` to the main node over the main node's unix link listener.
    pub fn link_unix(&mut self, i: usize) {
        let cmd = self.nodelink_cmd(i, &self.link_addr());
        self.spawn_logged(i, cmd);
    }

    /// Link secondary `i` over stdio: socat joins the link socket and iam-nodelink's
    /// stdin/stdout, as vchan-socket-proxy would.
    pub fn link_stdio(&mut self, i: usize) {
        let inner = self.nodelink_cmd(i, "stdio");
        let argv: Vec<String> = std::iter::once(inner.get_program().to_string_lossy().into_owned())
            .chain(inner.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let mut cmd = Command::new("socat");
        cmd.arg(format!("UNIX-CONNECT:{}", self.main.p("run/link.sock")))
            .arg(format!("EXEC:{},nofork", argv.join(" ")));
        self.spawn_logged(i, cmd);
    }

    pub fn nodelink_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.secondaries[i].path("nodelink.log")).unwrap_or_default()
    }

    /// `iam-nodelink status --json` of secondary `i`.
    pub fn link_status(&self, i: usize) -> Out {
        let s = &self.secondaries[i];
        s.applet(
            "iam-nodelink",
            &["--status-file", &s.p("run/nodelink.status"), "--json", "status"],
            None,
        )
    }

    /// Wait until secondary `i`'s link itself says it is registered (the main node may count
    /// it connected a moment before the link has its answer), and return its status.
    #[track_caller]
    pub fn wait_link_registered(&self, i: usize) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let out = self.link_status(i);
            if out.code == 0 && out.json()["state"] == "registered" {
                return out.json();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "link {i} not registered after 20 s: {}\n{}",
                out.stdout,
                self.nodelink_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the main node reports `node_id` connected (or not).
    #[track_caller]
    pub fn wait_connected(&self, node_id: &str, connected: bool) {
        let start = Instant::now();
        loop {
            let out = self.main.provision(&["--node", node_id, "--json", "node-info"]);
            // (node-info exits 3 for a node whose link is down.)
            if out.code == if connected { 0 } else { 3 } && out.json()["connected"] == connected {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node {node_id} not {} after 20 s: {}{}\nnodelink logs:\n{}",
                if connected { "connected" } else { "disconnected" },
                out.stdout,
                out.stderr,
                (0..self.secondaries.len())
                    .map(|i| self.nodelink_log(i))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop secondary `i`'s iam-nodelink as its service manager would (SIGTERM), and wait.
    pub fn stop_link(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.links[i].take().expect("a link running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn kill_link(&mut self, i: usize) {
        if let Some(mut c) = self.links[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `iam-provision --json --node all run` through the main node.
    pub fn run_all(&self, extra: &[&str]) -> Out {
        self.main.run_flow_on(Some("all"), extra)
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        for i in 0..self.links.len() {
            if std::thread::panicking() {
                eprintln!("nodelink {i} log:\n{}", self.nodelink_log(i));
            }
            self.kill_link(i);
        }
    }
}

/// The key ID (lower-case hex) in a certificate's `key_url` (RFC 7512, percent-encoded).
pub fn key_id_of(cert: &serde_json::Value) -> String {
    let url = cert["key_url"].as_str().unwrap();
    let enc = url.split("id=").nth(1).unwrap().split(';').next().unwrap();
    let b = enc.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push_str(&enc[i + 1..i + 3].to_ascii_lowercase());
            i += 3;
        } else {
            out.push_str(&format!("{:02x}", b[i]));
            i += 1;
        }
    }
    out
}

/// The node is provisioned with one certificate per module and exactly its objects.
#[track_caller]
pub fn assert_converged(node: &Node) {
    assert_store_matches(node, &[]);
}

/// The node is provisioned, and its token holds exactly the objects its records name:
/// `per_type` certificate records of each type, each with its key pair and certificate
/// sharing one ID; no pending key, no orphan, nothing missing.
#[track_caller]
pub fn assert_store_matches(node: &Node, per_type: &[(&str, usize)]) {
    let status = node.status();
    assert_eq!(status["state"], "provisioned", "{status}");
    for m in status["modules"].as_array().unwrap() {
        let want = per_type.iter().find(|(t, _)| m["type"] == *t).map_or(1, |(_, n)| *n);
        assert_eq!(m["certificates"], want, "certificate records of the module: {m}");
        assert_eq!(m["pending_key"], false, "no pending key left: {m}");
    }
    let objs = node.token_objects();
    let total: usize = status["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["certificates"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        objs.len(),
        3 * total,
        "three objects per certificate record, nothing else: {objs:#?}"
    );
    let certs = node.list_certs();
    assert_eq!(certs.len(), total);
    for c in &certs {
        let t = c["type"].as_str().unwrap();
        let id: &str = &key_id_of(c);
        let of: Vec<_> = objs.iter().filter(|o| o.1 == t && o.2 == id).collect();
        assert_eq!(
            of.len(),
            3,
            "{t} {id}: key pair and certificate on the token: {objs:#?}"
        );
    }
}

/// Wait (at most two minutes) until `cond` holds; `what` and the node's log if not.
pub fn wait_for(cond: impl Fn() -> bool, what: &str, node: &Node) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{what} did not happen:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `openssl ca -revoke` each of `revoked` (PEM files) by the CA `ca_pem`/`ca_key`, then
/// `openssl ca -gencrl`: the CRL's path. The CA's database is kept in `dir` as `NAME-*`.
pub fn openssl_crl_revoking(dir: &Path, name: &str, ca_pem: &Path, ca_key: &Path, revoked: &[&Path]) -> PathBuf {
    let d = dir.display();
    std::fs::create_dir_all(dir.join(format!("{name}-newcerts"))).unwrap();
    std::fs::write(dir.join(format!("{name}-index.txt")), "").unwrap();
    std::fs::write(dir.join(format!("{name}-crlnumber")), "1000\n").unwrap();
    let cnf = dir.join(format!("{name}-ca.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {d}/{name}-index.txt\nnew_certs_dir = {d}/{name}-newcerts\n\
             crlnumber = {d}/{name}-crlnumber\ncertificate = {}\nprivate_key = {}\n\
             default_md = sha256\ndefault_crl_days = 30\n",
            ca_pem.display(),
            ca_key.display()
        ),
    )
    .unwrap();
    let cnf = cnf.display();
    for r in revoked {
        sh(&format!("openssl ca -config {cnf} -revoke {} 2>&1", r.display())).ok();
    }
    let crl = dir.join(format!("{name}.crl"));
    sh(&format!("openssl ca -config {cnf} -gencrl -out {} 2>&1", crl.display())).ok();
    crl
}

/// The NodeInfo a hand-made link registers as node `id` (tests/unit.rs, tests/tunnel.rs).
pub fn link_node_info(id: &str) -> aos_iam::proto::wire::NodeInfo {
    aos_iam::proto::wire::NodeInfo {
        node_id: id.into(),
        node_type: "secondary".into(),
        name: id.into(),
        state: aos_iam::proto::wire::NodeState::Unprovisioned,
        cpus: vec![],
        total_ram: 1,
        partitions: vec![],
        os_name: "t".into(),
        os_version: "1".into(),
        attributes: vec![],
        connected: true,
    }
}
