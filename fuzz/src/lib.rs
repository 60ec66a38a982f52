//! What the fuzz targets share: a running iamd for `frame_server`, and the byte layouts the
//! targets and the seed generator agree on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aos_iam::config::Config;

/// `chain` inputs: the roots PEM, this separator, then the chain PEM (leaf first).
pub const CHAIN_SEPARATOR: u8 = 0;

/// `frame_server` inputs: a flags byte, then raw bytes written to the socket.
pub const FLAG_HELLO: u8 = 1;
pub const FLAG_PROTECTED: u8 = 2;

/// A real iamd (software key store, not in provisioning mode) serving on sockets in a
/// fresh directory; started once per fuzzing process.
pub struct Server {
    pub dir: PathBuf,
}

impl Server {
    pub fn get() -> &'static Server {
        static SERVER: OnceLock<Server> = OnceLock::new();
        SERVER.get_or_init(Server::start)
    }

    fn start() -> Server {
        // libFuzzer's main does not ignore SIGPIPE as Rust's does; iamd expects it ignored.
        unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
                .expect("ignore SIGPIPE");
        }
        let dir = std::env::temp_dir().join(format!("aos-iam-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["work", "run"] {
            std::fs::create_dir_all(dir.join(d)).expect("fuzz directory");
        }
        std::fs::write(dir.join("node-id"), "node-fuzz\n").expect("node id");
        let root = rcgen::KeyPair::generate().expect("root key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&root).expect("root");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("root file");
        let d = dir.display();
        let text = format!(
            "[node]\nid_file = \"{d}/node-id\"\nname = \"fuzz\"\n[paths]\nworking_dir = \"{d}/work\"\n\
             root_ca = \"{d}/ca.pem\"\npublic_socket = \"{d}/run/public.sock\"\n\
             protected_socket = \"{d}/run/protected.sock\"\n\
             [limits]\nframe_timeout = 2\n\
             [[modules]]\nid = \"iam\"\nalgorithm = \"ecdsa-p256\"\nextended_key_usage = [\"clientAuth\"]\n\
             store = \"software\"\n[modules.software]\ndir = \"{d}/work/keys\"\n"
        );
        let config = Config::from_sources(&[("fuzz.toml".to_string(), text)]).expect("fuzz configuration");
        std::thread::spawn(move || {
            if let Err(e) = aos_iam::daemon::run(config, false) {
                panic!("iamd stopped: {e}");
            }
        });
        let server = Server { dir };
        let start = Instant::now();
        while server.client().is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "iamd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn socket(&self, protected: bool) -> PathBuf {
        self.dir.join(if protected {
            "run/protected.sock"
        } else {
            "run/public.sock"
        })
    }

    pub fn client(&self) -> aos_iam::error::Result<aos_iam::proto::client::Client> {
        aos_iam::proto::client::Client::connect(&self.socket(false))
    }

    /// Write `bytes` on a fresh connection, close the writing half and read until iamd
    /// closes: iamd must answer or close within `limit`, whatever the bytes.
    pub fn feed(&self, protected: bool, bytes: &[u8], limit: Duration) {
        let mut s = UnixStream::connect(self.socket(protected)).expect("connect to iamd");
        s.set_write_timeout(Some(limit)).unwrap();
        s.set_read_timeout(Some(limit)).unwrap();
        // iamd may close before reading everything (that is a refusal, not a failure).
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("iamd neither answered nor closed within {:?}", start.elapsed())
                }
                Err(_) => break,
            }
        }
    }
}
