//! A software TPM 2.0 for the tests: swtpm behind tpm2-abrmd on a private D-Bus session (a
//! resource manager, as a real TPM has /dev/tpmrm0), reached through the tpm2-pkcs11 module.

use super::est::EstServer;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TPM2_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

/// swtpm, a D-Bus session and tpm2-abrmd on it, for one node; stopped when dropped.
pub struct Tpm {
    /// swtpm and dbus-daemon.
    children: Vec<Child>,
    abrmd: Option<Child>,
    /// `--max-transients` of tpm2-abrmd: the transient objects one client may keep loaded
    /// (the kernel's `/dev/tpmrm0` allows 3 per open file; abrmd's default is 27).
    pub max_transients: Option<u32>,
    tcti: String,
    dir: std::path::PathBuf,
    pub env: Vec<(String, String)>,
}

impl Tpm {
    pub fn start(dir: &Path) -> Tpm {
        Tpm::start_with(dir, None)
    }

    /// The same, the resource manager keeping at most `max_transients` objects per client.
    pub fn start_with(dir: &Path, max_transients: Option<u32>) -> Tpm {
        let state = dir.join("tpm-state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(dir.join("tpm-store")).unwrap();
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
        let env = vec![
            ("DBUS_SESSION_BUS_ADDRESS".to_string(), address),
            ("TPM2_PKCS11_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2TOOLS_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2_PKCS11_STORE".into(), dir.join("tpm-store").display().to_string()),
        ];
        let mut tpm = Tpm {
            children: vec![swtpm, dbus],
            abrmd: None,
            max_transients,
            tcti,
            dir: dir.to_path_buf(),
            env,
        };
        tpm.start_manager();
        tpm
    }

    /// Start tpm2-abrmd and wait until the TPM answers through it.
    pub fn start_manager(&mut self) {
        let bin = match Path::new("/usr/sbin/tpm2-abrmd").exists() {
            true => "/usr/sbin/tpm2-abrmd",
            false => "tpm2-abrmd",
        };
        let log = self.dir.join("tpm2-abrmd.log");
        let mut abrmd = Command::new(bin);
        abrmd.args(["--session", "--allow-root", &format!("--tcti={}", self.tcti)]);
        if let Some(n) = self.max_transients {
            abrmd.arg(format!("--max-transients={n}"));
        }
        let abrmd = abrmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tpm2-abrmd (Debian package tpm2-abrmd)");
        self.abrmd = Some(abrmd);
        let start = Instant::now();
        loop {
            let ok = Command::new("tpm2_getcap")
                .arg("properties-fixed")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the software TPM did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the resource manager (as when it is restarted): the TPM is out of reach.
    pub fn stop_manager(&mut self) {
        if let Some(mut a) = self.abrmd.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        self.stop_manager();
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
