//! Node links: a framed connection with requests in flight both ways, the secondary's end
//! (iam-nodelink), and TLS on links with a key that stays in its store.

pub mod nodelink;
pub mod peer;
pub mod tls;
pub mod tunnel;
