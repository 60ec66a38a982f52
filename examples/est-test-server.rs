//! The project's EST test server (tests/common/est.rs) as a program, for `make demo-enroll`:
//! `est-test-server DIR PORT [CLAIM_TOKEN]` serves `https://localhost:PORT/.well-known/est`,
//! issuing with the issuing CA `DIR/issuing.pem` + `.key` under the root `DIR/ca.pem` (or,
//! without one, with the root and `DIR/ca.key`), and trusting client certificates of that
//! root and of `DIR/factory-ca.pem`; its trust anchor is `DIR/est-anchor.pem` (kept, so a
//! server started again in DIR is the same server). It prints its URL, then a line per
//! request, until killed. A test tool, not a production EST server.

#[allow(dead_code)]
#[path = "../tests/common/est.rs"]
mod est;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(port)) = (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) else {
        eprintln!("usage: est-test-server DIR PORT [CLAIM_TOKEN]");
        std::process::exit(2);
    };
    let server = est::EstServer::start_at(std::path::Path::new(dir), "demo", "demo-password", port);
    server.set_claim_token(args.get(3).map(String::as_str));
    println!("{}", server.url);
    let mut seen = 0;
    loop {
        let log = server.requests();
        for line in &log[seen..] {
            println!("est-test-server: {line}");
        }
        seen = log.len();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
