//! iam-nodelink: the secondary node's link to the main node.
//!
//! Not built yet: node links (registration, forwarding, reconnection, TLS) come with the
//! multi-node work. Until then this applet says so and exits with EX_UNAVAILABLE (69), so a
//! unit file or script that starts it fails loudly instead of appearing to work.

pub fn main(name: &str, args: &[&str]) -> u8 {
    if matches!(args.first(), Some(&"--help") | Some(&"-h")) {
        println!("Usage: {name} ...\n\nNode links are not available in this build of aos-iam yet.");
        return 0;
    }
    eprintln!("{name}: node links are not available in this build of aos-iam yet");
    69
}
