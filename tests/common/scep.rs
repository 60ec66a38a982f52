//! Debian's independent SCEP server (`scepserver`, micromdm 2.1.0, written in Go), run
//! for a test with a throwaway RSA CA. It listens on every address and has no option to
//! bind one, so each test that runs it first moves its own thread into a private network
//! namespace with only a loopback: the server, iamd and the clients the test starts are
//! all inside it, and nothing is reachable from outside.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHALLENGE: &str = "scep-challenge-2f7d";
pub const PORT: u16 = 8080;

/// Move the calling thread (a test's own) into a new network namespace with `lo` up;
/// everything it starts from now on is in there.
pub fn private_network() {
    super::require_root();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
    assert!(up.success(), "ip link set lo up");
}

pub struct ScepServer {
    pub depot: PathBuf,
    pub url: String,
    log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

fn wait_listening(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "scepserver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl ScepServer {
    /// A CA made by `scepserver ca -init` in `dir/depot`, and the server on [`PORT`]
    /// (`-allowrenew 0`: the same subject may be issued again, as renewals need).
    pub fn start(dir: &Path, extra: &[&str]) -> ScepServer {
        let depot = dir.join("depot");
        let out = Command::new("scepserver")
            .args(["ca", "-init", "-depot"])
            .arg(&depot)
            .args([
                "-keySize",
                "2048",
                "-organization",
                "aos-iam tests",
                "-organizational_unit",
                "scep test CA",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scepserver ca -init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut args: Vec<String> = vec![
            "-depot".into(),
            depot.display().to_string(),
            "-port".into(),
            PORT.to_string(),
        ];
        args.extend([
            "-challenge".into(),
            CHALLENGE.into(),
            "-allowrenew".into(),
            "0".into(),
            "-debug".into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut s = ScepServer {
            url: format!("http://127.0.0.1:{PORT}/scep"),
            log: dir.join("scepserver.log"),
            depot,
            child: None,
            args,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new("scepserver")
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_listening(PORT);
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.depot.join("ca.pem")
    }

    /// SHA-256 of the CA certificate's DER, as `openssl x509 -fingerprint` prints it.
    pub fn fingerprint(&self) -> String {
        let out = super::sh(&format!(
            "openssl x509 -in {} -noout -fingerprint -sha256",
            self.ca_pem().display()
        ))
        .ok();
        out.stdout.trim().rsplit('=').next().unwrap().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ScepServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of the server that passes `pass` connections through, then
/// accepts the next one, reads its request and closes it unanswered: a server that goes
/// away in the middle of a transaction. Returns its URL.
pub fn vanishing_relay(port: u16, to: u16, pass: usize) -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            if n >= pass {
                let mut buf = [0u8; 4096];
                let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = client.read(&mut buf);
                drop(client);
                continue;
            }
            let mut server = std::net::TcpStream::connect(("127.0.0.1", to)).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            let _ = std::io::copy(&mut s2, &mut client);
            let _ = client.flush();
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://127.0.0.1:{port}/scep")
}
