//! Node links: a framed connection with requests in flight both ways, the secondary's end
//! (iam-nodelink) and the tunnel through it (TLS on links is `pki::tls`).

pub mod nodelink;
pub mod peer;
pub mod tunnel;
