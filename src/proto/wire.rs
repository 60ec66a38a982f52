//! The wire protocol: a fixed little-endian frame header, then a postcard body.
//!
//! `magic u32 | version u8 | kind u8 | flags u16 | id u64 | body_len u32` (docs/ARCHITECTURE.md §3).
//! The header is checked field by field before a byte of body is allocated; a body must
//! decode exactly (no trailing bytes) and pass the bounds of [`Request::check_bounds`].

use crate::error::{Error, ErrorKind};
use crate::secret::Secret;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;

/// `AIAM` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"AIAM");
pub const HEADER_LEN: usize = 20;
/// Default largest body accepted, configurable per listener.
pub const DEFAULT_BODY_LIMIT: u32 = 64 * 1024;
/// Flags defined so far: none. Unknown flags are refused, so that a later meaning is never ignored.
pub const KNOWN_FLAGS: u16 = 0;

/// Bounds on decoded fields (docs/ARCHITECTURE.md §3: vectors are bounded after decoding).
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SUBJECT_LEN: usize = 1024;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_SERIAL_LEN: usize = 64;
pub const MAX_ISSUER_LEN: usize = 4096;
/// Longest message SignWithLinkIdentity signs (a TLS handshake's is a few hundred bytes).
pub const MAX_SIGNED_LEN: usize = 4096;
/// Permissions: functional servers per instance, entries per server, and the length of
/// a permission's name or value.
pub const MAX_SERVERS: usize = 64;
pub const MAX_ENTRIES: usize = 64;
pub const MAX_VALUE_LEN: usize = 256;
/// Longest EST trust anchor (PEM, a small bundle) FinishBootstrap carries.
pub const MAX_ANCHOR_LEN: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Request = 0,
    Response = 1,
    Event = 2,
    Error = 3,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FrameKind::Request,
            1 => FrameKind::Response,
            2 => FrameKind::Event,
            3 => FrameKind::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: FrameKind,
    pub flags: u16,
    pub id: u64,
    pub body_len: u32,
}

/// Why a frame was refused. Each check of the header has its own variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    BadMagic(u32),
    UnsupportedVersion {
        got: u8,
        id: u64,
    },
    UnknownKind(u8),
    UnknownFlags(u16),
    TooLarge {
        len: u32,
        limit: u32,
    },
    /// The stream ended inside a frame.
    Truncated,
    Body(String),
    TrailingBytes(usize),
    Bounds(String),
    /// The peer did not complete its hello in time (seconds allowed).
    HelloTimeout(u64),
    /// A frame was begun but its rest did not come in time (seconds allowed).
    Stalled(u64),
    /// A connection neither asked nor subscribed for this long (seconds, `limits.idle_timeout`).
    Idle(u64),
    Io(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic(m) => {
                write!(f, "bad frame magic {m:#010x} (not an aos-iam peer?)")
            }
            FrameError::UnsupportedVersion { got, .. } => write!(
                f,
                "protocol version {got} is not supported; this side speaks versions {} to {}",
                crate::MIN_PROTOCOL_VERSION,
                crate::PROTOCOL_VERSION
            ),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::UnknownFlags(x) => write!(f, "unknown frame flags {x:#06x}"),
            FrameError::TooLarge { len, limit } => {
                write!(f, "frame body of {len} bytes exceeds the limit of {limit} bytes")
            }
            FrameError::Truncated => f.write_str("connection closed inside a frame"),
            FrameError::Body(e) => write!(f, "malformed frame body: {e}"),
            FrameError::TrailingBytes(n) => write!(f, "frame body has {n} trailing bytes"),
            FrameError::Bounds(e) => write!(f, "frame body out of bounds: {e}"),
            FrameError::HelloTimeout(s) => write!(f, "no hello within {s} s; closing"),
            FrameError::Stalled(s) => write!(f, "a frame was begun but not finished within {s} s; closing"),
            FrameError::Idle(s) => write!(
                f,
                "no request and no subscription for {s} s (limits.idle_timeout); closing"
            ),
            FrameError::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        let kind = match e {
            FrameError::Io(_) | FrameError::Truncated => ErrorKind::Unavailable,
            FrameError::HelloTimeout(_) | FrameError::Stalled(_) | FrameError::Idle(_) => ErrorKind::Timeout,
            _ => ErrorKind::Protocol,
        };
        Error::new(kind, e.to_string())
    }
}

impl Header {
    pub fn new(kind: FrameKind, id: u64, body_len: u32) -> Self {
        Header {
            version: crate::PROTOCOL_VERSION,
            kind,
            flags: 0,
            id,
            body_len,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.version;
        b[5] = self.kind as u8;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        b
    }

    /// Check every field, in order, before the caller allocates the body.
    pub fn decode(b: &[u8; HEADER_LEN], limit: u32) -> Result<Header, FrameError> {
        let le32 = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes"));
        let magic = le32(0..4);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let id = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let version = b[4];
        if !(crate::MIN_PROTOCOL_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
            return Err(FrameError::UnsupportedVersion { got: version, id });
        }
        let kind = FrameKind::from_u8(b[5]).ok_or(FrameError::UnknownKind(b[5]))?;
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let body_len = le32(16..20);
        if body_len > limit {
            return Err(FrameError::TooLarge { len: body_len, limit });
        }
        Ok(Header {
            version,
            kind,
            flags,
            id,
            body_len,
        })
    }
}

/// Encode one frame (header and body) at the current protocol version. Refuses a body over
/// `limit` rather than send it.
pub fn encode_frame<T: Serialize>(kind: FrameKind, id: u64, body: &T, limit: u32) -> Result<Vec<u8>, FrameError> {
    encode_frame_at(crate::PROTOCOL_VERSION, kind, id, body, limit)
}

/// Encode one frame with `version` in its header. The body's encoding is the caller's: a
/// request for an older peer goes through [`for_version`] first.
pub fn encode_frame_at<T: Serialize>(
    version: u8,
    kind: FrameKind,
    id: u64,
    body: &T,
    limit: u32,
) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(body).map_err(|e| FrameError::Body(e.to_string()))?;
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    let mut header = Header::new(kind, id, len);
    header.version = version;
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The messages of protocol version 1 that version 2 changed: only the hello, which states
/// one version where version 2 states the range a side speaks.
mod v1 {
    use super::Role;
    use serde::{Deserialize, Serialize};

    /// Encoded as variant 0 of `Request`, as version 1 had it.
    #[derive(Serialize, Deserialize)]
    pub enum Hello {
        Hello { version: u8, role: Role, node_id: String },
    }
}

/// A request as a peer speaking `version` reads it: the same value, or its older form.
/// Refuses a request that version cannot express, naming both versions.
pub fn for_version(version: u8, r: &Request) -> Result<RequestAt<'_>, Error> {
    let since = r.since();
    if since > version {
        return Err(Error::protocol(format!(
            "{} needs protocol version {since}; the other end speaks version {version}",
            r.name()
        )));
    }
    Ok(match (version, r) {
        (1, Request::Hello { role, node_id, .. }) => RequestAt::V1Hello(v1::Hello::Hello {
            version: 1,
            role: *role,
            node_id: node_id.clone(),
        }),
        _ => RequestAt::Current(r),
    })
}

/// A request encoded for one protocol version (see [`for_version`]).
pub enum RequestAt<'a> {
    Current(&'a Request),
    V1Hello(v1::Hello),
}

impl Serialize for RequestAt<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestAt::Current(r) => r.serialize(s),
            RequestAt::V1Hello(h) => h.serialize(s),
        }
    }
}

/// How frames go to one peer: the protocol version agreed in its hello, and the body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub version: u8,
    pub limit: u32,
}

impl Wire {
    /// Before a hello: the current version.
    pub fn new(limit: u32) -> Wire {
        Wire {
            version: crate::PROTOCOL_VERSION,
            limit,
        }
    }

    pub fn at(self, version: u8) -> Wire {
        Wire { version, ..self }
    }

    /// A response or event frame.
    pub fn frame<T: Serialize>(&self, kind: FrameKind, id: u64, body: &T) -> Result<Vec<u8>, FrameError> {
        encode_frame_at(self.version, kind, id, body, self.limit)
    }

    /// A request frame, in the form this peer's version reads.
    pub fn request(&self, id: u64, r: &Request) -> Result<Vec<u8>, Error> {
        Ok(encode_frame_at(
            self.version,
            FrameKind::Request,
            id,
            &for_version(self.version, r)?,
            self.limit,
        )?)
    }

    /// An error frame (see [`error_frame`]).
    pub fn error(&self, id: u64, e: &Error) -> Vec<u8> {
        error_frame_at(self.version, id, e, self.limit)
    }
}

/// The protocol version two sides speak: the newest both do, if their ranges meet.
pub fn agree(min: u8, max: u8) -> Result<u8, Error> {
    let version = max.min(crate::PROTOCOL_VERSION);
    if version < min.max(crate::MIN_PROTOCOL_VERSION) || min > max {
        return Err(Error::protocol(format!(
            "the other end speaks protocol versions {min} to {max}; this side speaks versions {} to {}",
            crate::MIN_PROTOCOL_VERSION,
            crate::PROTOCOL_VERSION
        )));
    }
    Ok(version)
}

/// Decode a body exactly: postcard must consume every byte.
/// A list whose memory follows the items actually decoded, not the count the sender
/// claims: serde would reserve up to 1 MiB on a count alone (a 4-byte prefix). Grown by a
/// quarter at a time, so a list never holds more than 1.25 times its items; with the
/// smallest encoding of each item (1 to 10 bytes for 24 to 224 bytes in memory), decoding
/// stays within 32 times the body.
fn growing_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Items<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Items<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == items.capacity() {
                    items.reserve_exact(items.len() / 4 + 4);
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(Items(std::marker::PhantomData))
}

pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// A request body of the current version decoded exactly and within its bounds.
pub fn decode_request(body: &[u8]) -> Result<Request, Error> {
    decode_request_at(crate::PROTOCOL_VERSION, body)
}

/// A request body of protocol `version` (its frame's header), decoded exactly and within
/// its bounds, as this version's `Request`. A request that version did not have is refused.
pub fn decode_request_at(version: u8, body: &[u8]) -> Result<Request, Error> {
    let r: Request = match (version, body.first()) {
        (1, Some(0)) => match decode_body::<v1::Hello>(body)? {
            v1::Hello::Hello { version, role, node_id } => Request::Hello {
                version,
                min_version: version,
                role,
                node_id,
            },
        },
        _ => decode_body(body)?,
    };
    if r.since() > version {
        return Err(Error::protocol(format!(
            "{} is not in protocol version {version} (it came with version {})",
            r.name(),
            r.since()
        )));
    }
    r.check_bounds()?;
    Ok(r)
}

/// An error frame for request `id` (0: the connection as a whole), at the current version.
/// A message too long for the limit is replaced by a short one of the same kind.
pub fn error_frame(id: u64, e: &Error, limit: u32) -> Vec<u8> {
    error_frame_at(crate::PROTOCOL_VERSION, id, e, limit)
}

pub fn error_frame_at(version: u8, id: u64, e: &Error, limit: u32) -> Vec<u8> {
    encode_frame_at(version, FrameKind::Error, id, e, limit).unwrap_or_else(|_| {
        let short = Error::new(e.kind.clone(), "error message too long to send");
        encode_frame_at(version, FrameKind::Error, id, &short, limit).expect("a short error fits any limit")
    })
}

/// Who opened a connection, stated in the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A client of the public or protected socket (applets, services).
    Client,
    /// The secondary side of a node link.
    NodeLink,
}

/// Where a node is in its life (docs/ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Unprovisioned,
    Provisioning,
    Provisioned,
    Paused,
    Error,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Unprovisioned => "unprovisioned",
            NodeState::Provisioning => "provisioning",
            NodeState::Provisioned => "provisioned",
            NodeState::Paused => "paused",
            NodeState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first frame on every connection: the newest and the oldest protocol version the
    /// sender speaks (version 1 stated one version), and for a link the node it speaks for
    /// (empty for clients). Answered with the version both speak.
    Hello {
        version: u8,
        role: Role,
        node_id: String,
        min_version: u8,
    },
    Version,
    GetNodeInfo {
        node_id: String,
    },
    GetAllNodeIds,
    GetCert {
        cert_type: String,
        issuer: Option<Vec<u8>>,
        serial: Option<Vec<u8>>,
    },
    ListCerts {
        node_id: String,
    },
    GetProvisioningStatus {
        node_id: String,
    },
    GetCertTypes {
        node_id: String,
    },
    StartProvisioning {
        node_id: String,
        password: Secret,
    },
    CreateKey {
        node_id: String,
        cert_type: String,
        subject: String,
        password: Secret,
    },
    ApplyCert {
        node_id: String,
        cert_type: String,
        chain_pem: String,
    },
    FinishProvisioning {
        node_id: String,
        password: Secret,
    },
    Deprovision {
        node_id: String,
        password: Secret,
    },
    RegisterInstance {
        instance: InstanceIdent,
        #[serde(deserialize_with = "growing_list")]
        permissions: Vec<ServerPermissions>,
    },
    UnregisterInstance {
        instance: InstanceIdent,
    },
    GetPermissions {
        secret: Secret,
        functional_server_id: String,
    },
    GetSystemInfo,
    GetSubjects,
    SubscribeSubjectsChanged,
    SubscribeNodeChanged,
    /// Events each time the current certificate of `cert_type` (every type if empty)
    /// changes: applied, rotated or removed.
    SubscribeCertChanged {
        cert_type: String,
    },
    PauseNode {
        node_id: String,
    },
    ResumeNode {
        node_id: String,
    },
    /// Every certificate of the node checked now (chain, objects in the store).
    CheckCerts {
        node_id: String,
    },
    /// The current certificate of the link identity module, for iam-nodelink's TLS.
    GetLinkIdentity,
    /// Sign a TLS handshake message with the key of the link identity certificate whose
    /// serial is given (so a rotation in between can never mix keys).
    SignWithLinkIdentity {
        serial: Vec<u8>,
        message: Vec<u8>,
    },
    /// Node link, secondary → main: the first request after the hello.
    RegisterNode {
        info: NodeInfo,
    },
    /// Node link, secondary → main: the node's info changed (state, partitions…).
    NodeInfoChanged {
        info: NodeInfo,
    },
    /// Main node: remove a node from the registry (its link, if up, is closed).
    ForgetNode {
        node_id: String,
    },
    /// Factory, version 3: the bootstrap identity is applied; store the enrollment settings
    /// (EST URL and trust anchor, empty for the configuration's; the claim token, empty for
    /// none) and leave the node `unprovisioned`, ready to enroll itself on site.
    FinishBootstrap {
        node_id: String,
        password: Secret,
        est_url: String,
        anchor_pem: String,
        claim_token: Secret,
    },
    /// Version 3: a quarantined node may try to enroll again.
    ReleaseQuarantine {
        node_id: String,
        password: Secret,
    },
    /// Version 3: the enrollment state machine of a node (see `EnrollmentStatus`).
    GetEnrollmentStatus {
        node_id: String,
    },
    /// Version 4: get the CSR of a key CreateKey made signed by a SCEP server (RFC 8894).
    /// The node itself makes the request, signed and its answer decrypted by that key in
    /// its store; answered with the chain, for ApplyCert.
    ScepEnroll {
        node_id: String,
        cert_type: String,
        csr_pem: String,
        /// `http://host[:port]/path`.
        url: String,
        /// SHA-256 of the CA certificate's DER, hex.
        ca_fingerprint: String,
        challenge: Secret,
        password: Secret,
    },
    /// Version 5: the link identity as GetLinkIdentity gives it, with the intermediates it
    /// was issued with, which a secondary presents in its TLS handshake (an issuing CA under
    /// the unit's root).
    GetLinkChain,
    /// Version 5: run the module's configured renewal (`[modules.renew]`) now, whatever its
    /// threshold, and answer with the certificate it applied.
    RenewNow {
        node_id: String,
        cert_type: String,
    },
    /// Version 6, secondary to main over a link: carry bytes to `endpoint` (`host:port`,
    /// on the main node's `links.tunnel_endpoints`); answered by `TunnelOpened`.
    TunnelOpen {
        endpoint: String,
    },
    /// Version 6, either way over a link: the next bytes of a tunnel, at most
    /// [`MAX_TUNNEL_CHUNK`]; the next is sent once this one is answered (`Done`).
    TunnelData {
        tunnel: u64,
        data: Vec<u8>,
    },
    /// Version 6, either way over a link: the tunnel is closed (its end of the bytes).
    TunnelClose {
        tunnel: u64,
    },
    /// Version 7, secondary to main over a registered link: the certificate revocation lists
    /// the main node checks with (`paths.crl`), answered by `Crl`, so that the secondary
    /// checks with them too (`links.main_crl`).
    GetCrl,
    /// Version 8, protected: an `Alert` event each time something needs someone: a
    /// certificate crossing its warning or critical threshold, the node quarantined, its id
    /// not the one it was provisioned under.
    SubscribeAlerts,
}

/// The most bytes one TunnelData carries.
pub const MAX_TUNNEL_CHUNK: usize = 16 * 1024;

/// Nodes of a unit whose info one link may report: CPUs, partitions and attributes.
pub const MAX_NODE_ITEMS: usize = 256;

impl Request {
    /// The operation's name as in docs/ARCHITECTURE.md §4, for logs and errors.
    /// The protocol version that brought this request: a peer of an older version is never
    /// sent it (every request of version 2 was in version 1; a later one says so here).
    pub fn since(&self) -> u8 {
        match self {
            Request::FinishBootstrap { .. }
            | Request::ReleaseQuarantine { .. }
            | Request::GetEnrollmentStatus { .. } => 3,
            Request::ScepEnroll { .. } => 4,
            Request::GetLinkChain | Request::RenewNow { .. } => 5,
            Request::TunnelOpen { .. } | Request::TunnelData { .. } | Request::TunnelClose { .. } => 6,
            Request::GetCrl => 7,
            Request::SubscribeAlerts => 8,
            _ => 1,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "Hello",
            Request::Version => "Version",
            Request::GetNodeInfo { .. } => "GetNodeInfo",
            Request::GetAllNodeIds => "GetAllNodeIds",
            Request::GetCert { .. } => "GetCert",
            Request::ListCerts { .. } => "ListCerts",
            Request::GetProvisioningStatus { .. } => "GetProvisioningStatus",
            Request::GetCertTypes { .. } => "GetCertTypes",
            Request::StartProvisioning { .. } => "StartProvisioning",
            Request::CreateKey { .. } => "CreateKey",
            Request::ApplyCert { .. } => "ApplyCert",
            Request::FinishProvisioning { .. } => "FinishProvisioning",
            Request::Deprovision { .. } => "Deprovision",
            Request::RegisterInstance { .. } => "RegisterInstance",
            Request::UnregisterInstance { .. } => "UnregisterInstance",
            Request::GetPermissions { .. } => "GetPermissions",
            Request::GetSystemInfo => "GetSystemInfo",
            Request::GetSubjects => "GetSubjects",
            Request::SubscribeSubjectsChanged => "SubscribeSubjectsChanged",
            Request::SubscribeNodeChanged => "SubscribeNodeChanged",
            Request::SubscribeCertChanged { .. } => "SubscribeCertChanged",
            Request::SubscribeAlerts => "SubscribeAlerts",
            Request::PauseNode { .. } => "PauseNode",
            Request::ResumeNode { .. } => "ResumeNode",
            Request::CheckCerts { .. } => "CheckCerts",
            Request::GetLinkIdentity => "GetLinkIdentity",
            Request::SignWithLinkIdentity { .. } => "SignWithLinkIdentity",
            Request::RegisterNode { .. } => "RegisterNode",
            Request::NodeInfoChanged { .. } => "NodeInfoChanged",
            Request::ForgetNode { .. } => "ForgetNode",
            Request::FinishBootstrap { .. } => "FinishBootstrap",
            Request::ReleaseQuarantine { .. } => "ReleaseQuarantine",
            Request::GetEnrollmentStatus { .. } => "GetEnrollmentStatus",
            Request::ScepEnroll { .. } => "ScepEnroll",
            Request::GetLinkChain => "GetLinkChain",
            Request::RenewNow { .. } => "RenewNow",
            Request::TunnelOpen { .. } => "TunnelOpen",
            Request::TunnelData { .. } => "TunnelData",
            Request::TunnelClose { .. } => "TunnelClose",
            Request::GetCrl => "GetCrl",
        }
    }

    /// The node an operation is for, for those that name one. On the main node, a node id
    /// other than its own sends the request over that node's link.
    pub fn target_node(&self) -> Option<&str> {
        match self {
            Request::GetNodeInfo { node_id }
            | Request::ListCerts { node_id }
            | Request::CheckCerts { node_id }
            | Request::GetProvisioningStatus { node_id }
            | Request::GetCertTypes { node_id }
            | Request::StartProvisioning { node_id, .. }
            | Request::CreateKey { node_id, .. }
            | Request::ApplyCert { node_id, .. }
            | Request::FinishProvisioning { node_id, .. }
            | Request::Deprovision { node_id, .. }
            | Request::PauseNode { node_id }
            | Request::ResumeNode { node_id }
            | Request::FinishBootstrap { node_id, .. }
            | Request::ReleaseQuarantine { node_id, .. }
            | Request::GetEnrollmentStatus { node_id }
            | Request::ScepEnroll { node_id, .. }
            | Request::RenewNow { node_id, .. } => Some(node_id),
            _ => None,
        }
    }

    /// Operations that may take minutes (hooks, token initialisation, key generation in a
    /// TPM or a secure element, a CA's answer) and get the long forwarding timeout.
    pub fn is_long(&self) -> bool {
        matches!(
            self,
            Request::StartProvisioning { .. }
                | Request::CreateKey { .. }
                | Request::FinishProvisioning { .. }
                | Request::Deprovision { .. }
                | Request::FinishBootstrap { .. }
                | Request::ScepEnroll { .. }
                | Request::RenewNow { .. }
        )
    }

    /// Requests that are sent only on a link: a secondary's registration and info, and
    /// the tunnels either end sends.
    pub fn is_link_only(&self) -> bool {
        matches!(
            self,
            Request::RegisterNode { .. } | Request::NodeInfoChanged { .. } | Request::GetCrl
        ) || self.is_tunnel()
    }

    /// The requests of a tunnel through a link (docs/ARCHITECTURE.md §9b).
    pub fn is_tunnel(&self) -> bool {
        matches!(
            self,
            Request::TunnelOpen { .. } | Request::TunnelData { .. } | Request::TunnelClose { .. }
        )
    }

    /// Whether the operation, when it succeeds, may change a current certificate (reported
    /// to certificate subscribers).
    pub fn changes_certs(&self) -> bool {
        matches!(
            self,
            Request::StartProvisioning { .. }
                | Request::ApplyCert { .. }
                | Request::Deprovision { .. }
                | Request::RenewNow { .. }
        )
    }

    /// Whether the operation, when it succeeds, changes the node's state (reported to node
    /// subscribers).
    pub fn changes_node_state(&self) -> bool {
        matches!(
            self,
            Request::StartProvisioning { .. }
                | Request::FinishProvisioning { .. }
                | Request::Deprovision { .. }
                | Request::PauseNode { .. }
                | Request::ResumeNode { .. }
                | Request::FinishBootstrap { .. }
                | Request::ReleaseQuarantine { .. }
        )
    }

    /// Whether the request carries the provisioning password (and so counts as a guess).
    pub fn carries_password(&self) -> bool {
        matches!(
            self,
            Request::StartProvisioning { .. }
                | Request::CreateKey { .. }
                | Request::FinishProvisioning { .. }
                | Request::Deprovision { .. }
                | Request::FinishBootstrap { .. }
                | Request::ReleaseQuarantine { .. }
                | Request::ScepEnroll { .. }
        )
    }

    /// The provisioning password the request carries, if it is one that does.
    pub fn password_mut(&mut self) -> Option<&mut crate::secret::Secret> {
        match self {
            Request::StartProvisioning { password, .. }
            | Request::CreateKey { password, .. }
            | Request::FinishProvisioning { password, .. }
            | Request::Deprovision { password, .. }
            | Request::FinishBootstrap { password, .. }
            | Request::ReleaseQuarantine { password, .. }
            | Request::ScepEnroll { password, .. } => Some(password),
            _ => None,
        }
    }

    /// Whether the operation serves or changes the node's identity (its certificates, its
    /// keys' use, its link identity): refused while the node's id is not the one it was
    /// provisioned under.
    pub fn serves_identity(&self) -> bool {
        matches!(
            self,
            Request::GetCert { .. }
                | Request::CreateKey { .. }
                | Request::ApplyCert { .. }
                | Request::FinishProvisioning { .. }
                | Request::FinishBootstrap { .. }
                | Request::ReleaseQuarantine { .. }
                | Request::ScepEnroll { .. }
                | Request::RenewNow { .. }
                | Request::GetLinkIdentity
                | Request::GetLinkChain
                | Request::SignWithLinkIdentity { .. }
        )
    }

    /// Whether the operation is served only on the protected socket.
    pub fn is_protected(&self) -> bool {
        matches!(
            self,
            Request::ListCerts { .. }
                | Request::SubscribeAlerts
                | Request::CheckCerts { .. }
                | Request::GetProvisioningStatus { .. }
                | Request::GetCertTypes { .. }
                | Request::StartProvisioning { .. }
                | Request::CreateKey { .. }
                | Request::ApplyCert { .. }
                | Request::FinishProvisioning { .. }
                | Request::Deprovision { .. }
                | Request::RegisterInstance { .. }
                | Request::UnregisterInstance { .. }
                | Request::PauseNode { .. }
                | Request::ResumeNode { .. }
                | Request::GetLinkIdentity
                | Request::SignWithLinkIdentity { .. }
                | Request::ForgetNode { .. }
                | Request::FinishBootstrap { .. }
                | Request::ReleaseQuarantine { .. }
                | Request::GetEnrollmentStatus { .. }
                | Request::ScepEnroll { .. }
                | Request::GetLinkChain
                | Request::RenewNow { .. }
        )
    }

    /// Bounds checked after decoding; the body limit already bounds the total.
    pub fn check_bounds(&self) -> Result<(), FrameError> {
        fn max(what: &str, len: usize, limit: usize) -> Result<(), FrameError> {
            if len > limit {
                return Err(FrameError::Bounds(format!(
                    "{what} is {len} bytes, at most {limit} allowed"
                )));
            }
            Ok(())
        }
        fn most(what: &str, n: usize, limit: usize) -> Result<(), FrameError> {
            if n > limit {
                return Err(FrameError::Bounds(format!("{n} {what}, at most {limit} allowed")));
            }
            Ok(())
        }
        match self {
            Request::Hello { node_id, .. } => max("node_id", node_id.len(), MAX_NAME_LEN),
            Request::RegisterNode { info } | Request::NodeInfoChanged { info } => info.check_bounds(),
            Request::GetLinkIdentity | Request::GetLinkChain | Request::GetCrl => Ok(()),
            Request::TunnelOpen { endpoint } => max("endpoint", endpoint.len(), MAX_NAME_LEN),
            Request::TunnelData { data, .. } => max("tunnel data", data.len(), MAX_TUNNEL_CHUNK),
            Request::TunnelClose { .. } => Ok(()),
            Request::RenewNow { node_id, cert_type } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("cert_type", cert_type.len(), MAX_NAME_LEN)
            }
            Request::SubscribeCertChanged { cert_type } => max("cert_type", cert_type.len(), MAX_NAME_LEN),
            Request::SignWithLinkIdentity { serial, message } => {
                max("serial", serial.len(), MAX_SERIAL_LEN)?;
                max("message", message.len(), MAX_SIGNED_LEN)
            }
            Request::Version
            | Request::GetAllNodeIds
            | Request::GetSystemInfo
            | Request::GetSubjects
            | Request::SubscribeSubjectsChanged
            | Request::SubscribeNodeChanged
            | Request::SubscribeAlerts => Ok(()),
            Request::PauseNode { node_id } | Request::ResumeNode { node_id } | Request::ForgetNode { node_id } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)
            }
            Request::RegisterInstance { instance, permissions } => {
                instance.check_bounds()?;
                most("functional servers", permissions.len(), MAX_SERVERS)?;
                for p in permissions {
                    max("functional_server_id", p.server.len(), MAX_NAME_LEN)?;
                    most("permission entries", p.entries.len(), MAX_ENTRIES)?;
                    for (k, v) in &p.entries {
                        max("permission name", k.len(), MAX_VALUE_LEN)?;
                        max("permission value", v.len(), MAX_VALUE_LEN)?;
                    }
                }
                Ok(())
            }
            Request::UnregisterInstance { instance } => instance.check_bounds(),
            Request::GetPermissions {
                secret,
                functional_server_id,
            } => {
                max("secret", secret.expose().len(), MAX_VALUE_LEN)?;
                max("functional_server_id", functional_server_id.len(), MAX_NAME_LEN)
            }
            Request::GetNodeInfo { node_id }
            | Request::ListCerts { node_id }
            | Request::CheckCerts { node_id }
            | Request::GetProvisioningStatus { node_id }
            | Request::GetCertTypes { node_id }
            | Request::GetEnrollmentStatus { node_id } => max("node_id", node_id.len(), MAX_NAME_LEN),
            Request::GetCert {
                cert_type,
                issuer,
                serial,
            } => {
                max("cert_type", cert_type.len(), MAX_NAME_LEN)?;
                max("issuer", issuer.as_ref().map_or(0, Vec::len), MAX_ISSUER_LEN)?;
                max("serial", serial.as_ref().map_or(0, Vec::len), MAX_SERIAL_LEN)
            }
            Request::StartProvisioning { node_id, password }
            | Request::FinishProvisioning { node_id, password }
            | Request::Deprovision { node_id, password }
            | Request::ReleaseQuarantine { node_id, password } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("password", password.expose().len(), MAX_PASSWORD_LEN)
            }
            Request::FinishBootstrap {
                node_id,
                password,
                est_url,
                anchor_pem,
                claim_token,
            } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("password", password.expose().len(), MAX_PASSWORD_LEN)?;
                max("est_url", est_url.len(), MAX_SUBJECT_LEN)?;
                max("anchor_pem", anchor_pem.len(), MAX_ANCHOR_LEN)?;
                max("claim_token", claim_token.expose().len(), MAX_PASSWORD_LEN)
            }
            Request::CreateKey {
                node_id,
                cert_type,
                subject,
                password,
            } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("cert_type", cert_type.len(), MAX_NAME_LEN)?;
                max("subject", subject.len(), MAX_SUBJECT_LEN)?;
                max("password", password.expose().len(), MAX_PASSWORD_LEN)
            }
            Request::ApplyCert { node_id, cert_type, .. } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("cert_type", cert_type.len(), MAX_NAME_LEN)
            }
            Request::ScepEnroll {
                node_id,
                cert_type,
                csr_pem,
                url,
                ca_fingerprint,
                challenge,
                password,
            } => {
                max("node_id", node_id.len(), MAX_NAME_LEN)?;
                max("cert_type", cert_type.len(), MAX_NAME_LEN)?;
                max("csr_pem", csr_pem.len(), MAX_ANCHOR_LEN)?;
                max("url", url.len(), MAX_SUBJECT_LEN)?;
                max("ca_fingerprint", ca_fingerprint.len(), MAX_NAME_LEN)?;
                max("challenge", challenge.expose().len(), MAX_PASSWORD_LEN)?;
                max("password", password.expose().len(), MAX_PASSWORD_LEN)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub node_type: String,
    pub name: String,
    pub state: NodeState,
    #[serde(deserialize_with = "growing_list")]
    pub cpus: Vec<CpuInfo>,
    /// Total RAM in bytes.
    pub total_ram: u64,
    #[serde(deserialize_with = "growing_list")]
    pub partitions: Vec<PartitionInfo>,
    pub os_name: String,
    pub os_version: String,
    /// Attributes from the configuration (`MainNode`…), name and value.
    #[serde(deserialize_with = "growing_list")]
    pub attributes: Vec<(String, String)>,
    /// Whether the node is reachable now: always for the node answering; for another
    /// node, whether its link is up.
    pub connected: bool,
}

impl NodeInfo {
    /// Bounds on what a node link may report about its node.
    pub fn check_bounds(&self) -> Result<(), FrameError> {
        let too_long = [
            ("node_id", &self.node_id),
            ("node_type", &self.node_type),
            ("name", &self.name),
            ("os_name", &self.os_name),
            ("os_version", &self.os_version),
        ]
        .into_iter()
        .find(|(_, v)| v.len() > MAX_NAME_LEN);
        if let Some((what, v)) = too_long {
            return Err(FrameError::Bounds(format!(
                "node info {what} is {} bytes, at most {MAX_NAME_LEN} allowed",
                v.len()
            )));
        }
        if self.node_id.is_empty() {
            return Err(FrameError::Bounds("node info has an empty node_id".into()));
        }
        for (what, n) in [
            ("CPUs", self.cpus.len()),
            ("partitions", self.partitions.len()),
            ("attributes", self.attributes.len()),
        ] {
            if n > MAX_NODE_ITEMS {
                return Err(FrameError::Bounds(format!(
                    "node info has {n} {what}, at most {MAX_NODE_ITEMS} allowed"
                )));
            }
        }
        let strings = self
            .cpus
            .iter()
            .flat_map(|c| [&c.model, &c.architecture])
            .chain(self.partitions.iter().flat_map(|p| [&p.name, &p.path]))
            .chain(self.partitions.iter().flat_map(|p| p.types.iter()))
            .chain(self.attributes.iter().flat_map(|(k, v)| [k, v]));
        for s in strings {
            if s.len() > MAX_VALUE_LEN {
                return Err(FrameError::Bounds(format!(
                    "a node info value is {} bytes, at most {MAX_VALUE_LEN} allowed",
                    s.len()
                )));
            }
        }
        if self.partitions.iter().any(|p| p.types.len() > MAX_ENTRIES) {
            return Err(FrameError::Bounds(format!(
                "a partition has more than {MAX_ENTRIES} types"
            )));
        }
        Ok(())
    }
}

/// One physical CPU (socket) as /proc/cpuinfo describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    pub cores: u32,
    pub threads: u32,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub name: String,
    pub types: Vec<String>,
    pub path: String,
    /// Total size in bytes (statvfs).
    pub total_size: u64,
}

/// Which instance of which item a permission secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIdent {
    pub item_id: String,
    pub subject_id: String,
    pub instance: u64,
    pub kind: InstanceKind,
}

impl InstanceIdent {
    fn check_bounds(&self) -> Result<(), FrameError> {
        for (what, v) in [("item_id", &self.item_id), ("subject_id", &self.subject_id)] {
            if v.len() > MAX_NAME_LEN {
                return Err(FrameError::Bounds(format!(
                    "{what} is {} bytes, at most {MAX_NAME_LEN} allowed",
                    v.len()
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceKind {
    Service,
    Component,
}

/// The permissions of an instance for one functional server: name → value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPermissions {
    pub server: String,
    #[serde(deserialize_with = "growing_list")]
    pub entries: Vec<(String, String)>,
}

/// Something a subscription reports, carried in an event frame with the subscription's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    SubjectsChanged(Vec<String>),
    NodeChanged(NodeInfo),
    /// The current certificate of a type is now `current` (`None`: there is none).
    CertChanged {
        cert_type: String,
        current: Option<CertInfo>,
    },
    /// Version 8 (`SubscribeAlerts`): something needs someone.
    Alert(Alert),
}

impl Event {
    /// The protocol version that brought this event.
    pub fn since(&self) -> u8 {
        match self {
            Event::Alert(_) => 8,
            _ => 1,
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertKind {
    /// A current certificate is within the warning threshold of its end (30 days).
    CertWarning,
    /// Within the critical threshold (7 days), or past its end.
    CertCritical,
    /// Enrollment gave up: the node is quarantined.
    Quarantined,
    /// The node's id is not the one it was provisioned under: its identity is not served.
    IdChanged,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::CertWarning => "certificate_warning",
            AlertKind::CertCritical => "certificate_critical",
            AlertKind::Quarantined => "quarantined",
            AlertKind::IdChanged => "id_changed",
        }
    }
}

/// One alert: what, about which certificate (none for the node's), and what to tell a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub node_id: String,
    /// The certificate's type and serial (empty for the node's alerts).
    pub cert_type: String,
    pub serial: Vec<u8>,
    /// The certificate's end, seconds since the Unix epoch (0 for the node's alerts).
    pub not_after: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub cert_type: String,
    /// Issuer DN as text (RFC 4514), for humans.
    pub issuer: String,
    /// Issuer DN as DER, for `GetCert {issuer, serial}`.
    pub issuer_der: Vec<u8>,
    /// Serial number, big-endian bytes without sign padding.
    pub serial: Vec<u8>,
    pub subject: String,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub cert_url: String,
    pub key_url: String,
    /// The certificate `GetCert` without issuer and serial serves for its type.
    pub current: bool,
}

/// A certificate as `iam-certctl check` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertCheck {
    pub info: CertInfo,
    /// Why the chain does not validate against the root now (empty: it does).
    pub chain_error: String,
    pub key_present: bool,
    pub cert_present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub cert_type: String,
    /// Whether the module needs a CA-signed certificate (it is listed by GetCertTypes).
    pub needs_ca: bool,
    pub pending_key: bool,
    pub certificates: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningStatus {
    pub node_id: String,
    pub state: NodeState,
    pub provisioning_mode: bool,
    #[serde(deserialize_with = "growing_list")]
    pub modules: Vec<ModuleStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u8,
        node_id: String,
    },
    Version {
        version: String,
        protocol: u8,
    },
    NodeInfo(NodeInfo),
    NodeIds(Vec<String>),
    Cert(CertInfo),
    Certs(#[serde(deserialize_with = "growing_list")] Vec<CertInfo>),
    Status(ProvisioningStatus),
    CertTypes(Vec<String>),
    Csr {
        pem: String,
    },
    Applied(CertInfo),
    Done,
    Secret(Secret),
    Permissions {
        instance: InstanceIdent,
        #[serde(deserialize_with = "growing_list")]
        entries: Vec<(String, String)>,
    },
    SystemInfo {
        system_id: String,
        unit_model: String,
        version: String,
    },
    Subjects(Vec<String>),
    /// A subscription is in place; its events follow with the request's id.
    Subscribed,
    LinkIdentity {
        cert_der: Vec<u8>,
        /// The key's algorithm by its configuration name (`ecdsa-p384`).
        algorithm: String,
        serial: Vec<u8>,
    },
    Signature(Vec<u8>),
    CertChecks(#[serde(deserialize_with = "growing_list")] Vec<CertCheck>),
    /// Version 3: the answer to GetEnrollmentStatus.
    Enrollment(EnrollmentStatus),
    /// Version 4: the answer to ScepEnroll, the issued chain, leaf first.
    Chain {
        pem: String,
    },
    /// Version 5: the answer to GetLinkChain: the leaf and its intermediates (DER, leaf
    /// first, the root left out).
    LinkChain {
        #[serde(deserialize_with = "growing_list")]
        chain: Vec<Vec<u8>>,
        algorithm: String,
        serial: Vec<u8>,
    },
    /// Version 6: the answer to TunnelOpen: the tunnel's number on this link.
    TunnelOpened {
        tunnel: u64,
    },
    /// Version 7: the answer to GetCrl: each CRL as DER, in the order of the main node's
    /// `paths.crl` (empty: it checks with none).
    Crl {
        #[serde(deserialize_with = "growing_list")]
        crls: Vec<Vec<u8>>,
    },
}

impl Response {
    /// The protocol version that brought this answer (a request of that version asks for it).
    pub fn since(&self) -> u8 {
        match self {
            Response::Enrollment(_) => 3,
            Response::Chain { .. } => 4,
            Response::LinkChain { .. } => 5,
            Response::TunnelOpened { .. } => 6,
            Response::Crl { .. } => 7,
            _ => 1,
        }
    }
}

/// The enrollment state machine of a node (docs/ARCHITECTURE.md §5b):
/// `unprovisioned → enrolling → provisioned → operational`, and `quarantined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollState {
    /// No enrollment configured or bootstrapped: the node is provisioned by a factory script.
    NotConfigured,
    Unprovisioned,
    Enrolling,
    Provisioned,
    Operational,
    Quarantined,
}

impl EnrollState {
    /// The node attribute (in NodeInfo) that carries the enrollment state to subscribers
    /// and, over node links, to the main node.
    pub const ATTRIBUTE: &'static str = "EnrollmentState";

    pub fn name(self) -> &'static str {
        match self {
            EnrollState::NotConfigured => "not-configured",
            EnrollState::Unprovisioned => "unprovisioned",
            EnrollState::Enrolling => "enrolling",
            EnrollState::Provisioned => "provisioned",
            EnrollState::Operational => "operational",
            EnrollState::Quarantined => "quarantined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentStatus {
    pub node_id: String,
    pub state: EnrollState,
    /// The step in progress or last done, for humans (`enroll online: certificate obtained`).
    pub step: String,
    /// Failed attempts since enrollment began (or was released), and how many are allowed.
    pub attempts: u32,
    pub max_attempts: u32,
    /// When the next attempt is due (seconds since the Unix epoch; 0: none is planned).
    pub next_attempt: i64,
    pub last_error: String,
    /// Why the node is quarantined (empty otherwise).
    pub reason: String,
    /// When the state was entered (seconds since the Unix epoch).
    pub since: i64,
    /// The certificate types enrolled so far.
    #[serde(deserialize_with = "growing_list")]
    pub enrolled: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes() -> [u8; HEADER_LEN] {
        Header::new(FrameKind::Request, 7, 10).encode()
    }

    #[test]
    fn header_round_trips() {
        let h = Header::decode(&header_bytes(), DEFAULT_BODY_LIMIT).unwrap();
        assert_eq!(h, Header::new(FrameKind::Request, 7, 10));
    }

    #[test]
    fn bad_magic_is_refused_first() {
        let mut b = header_bytes();
        b[0] = b'X';
        b[4] = 99; // also a bad version: magic is checked first
        assert!(matches!(
            Header::decode(&b, DEFAULT_BODY_LIMIT),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn other_version_is_refused_naming_both() {
        let mut b = header_bytes();
        let newest = crate::PROTOCOL_VERSION;
        for v in [0, newest + 1, 255] {
            b[4] = v;
            let e = Header::decode(&b, DEFAULT_BODY_LIMIT).unwrap_err();
            assert_eq!(e, FrameError::UnsupportedVersion { got: v, id: 7 });
            let spoken = format!("versions 1 to {newest}");
            assert!(e.to_string().contains(&format!("version {v}")) && e.to_string().contains(&spoken));
        }
        for v in 1..=newest {
            b[4] = v;
            assert_eq!(Header::decode(&b, DEFAULT_BODY_LIMIT).unwrap().version, v);
        }
    }

    #[test]
    fn two_sides_agree_on_the_newest_version_both_speak_or_name_both_ranges() {
        assert_eq!(agree(1, 1).unwrap(), 1);
        assert_eq!(agree(1, 2).unwrap(), 2);
        assert_eq!(agree(1, 3).unwrap(), 3);
        assert_eq!(agree(1, 4).unwrap(), 4);
        let newest = crate::PROTOCOL_VERSION;
        assert_eq!(agree(1, newest).unwrap(), newest);
        assert_eq!(agree(1, 99).unwrap(), newest);
        assert_eq!(agree(2, 99).unwrap(), newest);
        let (a, b) = (newest + 1, newest + 2);
        let e = agree(a, b).unwrap_err();
        assert!(
            e.message.contains(&format!("versions {a} to {b}"))
                && e.message.contains(&format!("versions 1 to {newest}")),
            "{e}"
        );
        assert!(agree(2, 1).is_err(), "an empty range");
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut b = header_bytes();
        b[5] = 4;
        assert_eq!(Header::decode(&b, DEFAULT_BODY_LIMIT), Err(FrameError::UnknownKind(4)));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut b = header_bytes();
        b[6] = 1;
        assert_eq!(Header::decode(&b, DEFAULT_BODY_LIMIT), Err(FrameError::UnknownFlags(1)));
    }

    #[test]
    fn body_over_the_limit_is_refused_before_allocation() {
        let mut b = header_bytes();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Header::decode(&b, DEFAULT_BODY_LIMIT),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                limit: DEFAULT_BODY_LIMIT
            })
        );
        b[16..20].copy_from_slice(&DEFAULT_BODY_LIMIT.to_le_bytes());
        assert!(Header::decode(&b, DEFAULT_BODY_LIMIT).is_ok());
    }

    #[test]
    fn body_must_be_consumed_exactly() {
        let mut body = postcard::to_stdvec(&Request::Version).unwrap();
        assert_eq!(decode_body::<Request>(&body).unwrap(), Request::Version);
        body.push(0);
        assert_eq!(decode_body::<Request>(&body), Err(FrameError::TrailingBytes(1)));
    }

    #[test]
    fn malformed_body_is_refused() {
        assert!(matches!(
            decode_body::<Request>(&[200, 200, 200]),
            Err(FrameError::Body(_))
        ));
        assert!(matches!(decode_body::<Request>(&[]), Err(FrameError::Body(_))));
    }

    #[test]
    fn a_body_claiming_a_huge_string_does_not_allocate_it() {
        // CreateKey (variant 8), node_id length as a varint of 2^32-1 and no data.
        let body = [8u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(decode_body::<Request>(&body), Err(FrameError::Body(_))));
    }

    #[test]
    fn bounds_are_checked_after_decoding() {
        let r = Request::CreateKey {
            node_id: String::new(),
            cert_type: "x".repeat(MAX_NAME_LEN + 1),
            subject: String::new(),
            password: Secret::new(String::new()),
        };
        assert!(matches!(r.check_bounds(), Err(FrameError::Bounds(m)) if m.contains("cert_type")));
    }

    #[test]
    fn encode_refuses_a_body_over_the_limit() {
        let r = Request::ApplyCert {
            node_id: String::new(),
            cert_type: "a".into(),
            chain_pem: "x".repeat(100),
        };
        assert!(matches!(
            encode_frame(FrameKind::Request, 1, &r, 50),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn protected_operations_are_marked() {
        assert!(!Request::Version.is_protected());
        assert!(!Request::GetCert {
            cert_type: "iam".into(),
            issuer: None,
            serial: None
        }
        .is_protected());
        assert!(Request::StartProvisioning {
            node_id: String::new(),
            password: Secret::new("p".into())
        }
        .is_protected());
    }
}
