//! The typed client of iamd's sockets, used by every applet and by the tests.
//!
//! Blocking (a command-line tool makes one call at a time); it speaks the same frames as the
//! server, opens with a hello, and turns error frames back into typed [`Error`]s. Every wait
//! is bounded: connecting by [`CONNECT_TIMEOUT`], a request by [`REQUEST_TIMEOUT`] (the
//! long provisioning steps by [`LONG_REQUEST_TIMEOUT`]); only waiting for an event of a
//! subscription has no end.

use crate::error::{Error, Result};
use crate::proto::transport;
use crate::proto::wire::Wire;
use crate::proto::wire::{
    self, CertInfo, Event, FrameKind, InstanceIdent, NodeInfo, ProvisioningStatus, Request, Response, Role,
    ServerPermissions,
};
use crate::secret::Secret;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Events read while waiting for an answer, kept for [`Client::next_event`].
const MAX_QUEUED_EVENTS: usize = 1024;
/// How long connecting and the hello may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request may wait for its answer: longer than iamd's own bound on forwarding
/// one (`links.request_timeout`, 60 s by default), so that iamd's error arrives first.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);
/// StartProvisioning, FinishProvisioning and Deprovision (hooks, tokens; forwarded with
/// `links.long_request_timeout`, 300 s by default).
pub const LONG_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(360);

/// One frame from a stream whose read timeout is set: a timeout is `timeout`, naming what
/// got no answer and the time it had.
fn read_within(
    stream: &mut UnixStream,
    limit: u32,
    time: std::time::Duration,
    what: &str,
) -> Result<Option<(wire::Header, Vec<u8>)>> {
    struct Watched<'a> {
        stream: &'a mut UnixStream,
        timed_out: bool,
    }
    impl std::io::Read for Watched<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let r = self.stream.read(buf);
            if let Err(e) = &r {
                self.timed_out |= matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
            }
            r
        }
    }
    let mut w = Watched {
        stream,
        timed_out: false,
    };
    transport::read_frame_blocking(&mut w, limit).map_err(|e| match w.timed_out {
        true => Error::new(
            crate::error::ErrorKind::Timeout,
            format!("no answer from iamd to {what} within {} s", time.as_secs()),
        ),
        false => e.into(),
    })
}

pub struct Client {
    stream: UnixStream,
    queued: std::collections::VecDeque<(u64, Vec<u8>)>,
    next_id: u64,
    /// The protocol version agreed in the hello, and the body limit.
    wire: Wire,
    /// The header version of the last error frame (what an older iamd speaks).
    refused_in: Option<u8>,
    /// The node id the server stated in its hello.
    pub server_node_id: String,
}

fn unexpected(op: &str, r: Response) -> Error {
    Error::protocol(format!("{op}: unexpected answer {r:?}"))
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client> {
        match Client::connect_offering(path, crate::PROTOCOL_VERSION)? {
            Ok(c) => Ok(c),
            // An iamd of the release before versions were agreed: once more, in its version.
            Err(version) => Client::connect_offering(path, version)?
                .map_err(|v| Error::protocol(format!("iamd at {} refused protocol version {v}", path.display()))),
        }
    }

    /// Connect and say hello offering protocol versions up to `offer`; `Err(v)` if iamd
    /// refused that outright in the one version `v` it speaks.
    fn connect_offering(path: &Path, offer: u8) -> Result<std::result::Result<Client, u8>> {
        let stream = crate::sys::connect::unix_within(path, CONNECT_TIMEOUT)
            .map_err(|e| Error::unavailable(format!("cannot connect to {}: {e} (is iamd running?)", path.display())))?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
        let mut c = Client {
            stream,
            queued: Default::default(),
            next_id: 1,
            wire: Wire::new(wire::DEFAULT_BODY_LIMIT).at(offer),
            refused_in: None,
            server_node_id: String::new(),
        };
        let hello = Request::Hello {
            version: offer,
            min_version: crate::MIN_PROTOCOL_VERSION,
            role: Role::Client,
            node_id: String::new(),
        };
        match c.call(hello) {
            Ok(Response::Hello { node_id, version }) if (crate::MIN_PROTOCOL_VERSION..=offer).contains(&version) => {
                c.server_node_id = node_id;
                c.wire = c.wire.at(version);
            }
            Ok(r) => return Err(unexpected("Hello", r)),
            Err(e) if e.kind == crate::ErrorKind::Protocol && c.refused_in.is_some_and(|v| v < offer) => {
                return Ok(Err(c.refused_in.unwrap_or(offer)));
            }
            Err(e) => return Err(e),
        }
        Ok(Ok(c))
    }

    /// Send one request and wait for its answer, at most [`REQUEST_TIMEOUT`] (or
    /// [`LONG_REQUEST_TIMEOUT`] for the long steps); the hello, [`CONNECT_TIMEOUT`].
    pub fn call(&mut self, request: Request) -> Result<Response> {
        use std::io::Write;
        let limit = match (&request, request.is_long()) {
            (Request::Hello { .. }, _) => CONNECT_TIMEOUT,
            (_, true) => LONG_REQUEST_TIMEOUT,
            (_, false) => REQUEST_TIMEOUT,
        };
        self.stream
            .set_read_timeout(Some(limit))
            .and_then(|()| self.stream.set_write_timeout(Some(limit)))
            .map_err(|e| Error::internal(format!("socket timeouts: {e}")))?;
        let id = self.next_id;
        self.next_id += 1;
        // The frame may carry a password: zeroed once sent.
        let frame = zeroize::Zeroizing::new(self.wire.request(id, &request)?);
        self.stream
            .write_all(&frame)
            .map_err(|e| Error::unavailable(format!("sending {}: {e}", request.name())))?;
        drop(frame);
        loop {
            let (header, body) = read_within(&mut self.stream, self.wire.limit, limit, request.name())?
                .ok_or_else(|| Error::unavailable(format!("iamd closed the connection during {}", request.name())))?;
            match header.kind {
                FrameKind::Error => {
                    self.refused_in = Some(header.version);
                    return Err(wire::decode_body::<Error>(&body)?);
                }
                FrameKind::Response if header.id == id => return Ok(wire::decode_body(&body)?),
                FrameKind::Event => {
                    if self.queued.len() == MAX_QUEUED_EVENTS {
                        return Err(Error::unavailable(format!(
                            "more than {MAX_QUEUED_EVENTS} events arrived unread"
                        )));
                    }
                    self.queued.push_back((header.id, body));
                }
                // Answers to other requests are not ours to read here.
                _ => continue,
            }
        }
    }

    pub fn version(&mut self) -> Result<(String, u8)> {
        match self.call(Request::Version)? {
            Response::Version { version, protocol } => Ok((version, protocol)),
            r => Err(unexpected("Version", r)),
        }
    }

    pub fn node_info(&mut self, node_id: &str) -> Result<NodeInfo> {
        match self.call(Request::GetNodeInfo {
            node_id: node_id.into(),
        })? {
            Response::NodeInfo(i) => Ok(i),
            r => Err(unexpected("GetNodeInfo", r)),
        }
    }

    pub fn cert(&mut self, cert_type: &str, issuer: Option<Vec<u8>>, serial: Option<Vec<u8>>) -> Result<CertInfo> {
        match self.call(Request::GetCert {
            cert_type: cert_type.into(),
            issuer,
            serial,
        })? {
            Response::Cert(c) => Ok(c),
            r => Err(unexpected("GetCert", r)),
        }
    }

    pub fn list_certs(&mut self, node_id: &str) -> Result<Vec<CertInfo>> {
        match self.call(Request::ListCerts {
            node_id: node_id.into(),
        })? {
            Response::Certs(c) => Ok(c),
            r => Err(unexpected("ListCerts", r)),
        }
    }

    pub fn check_certs(&mut self, node_id: &str) -> Result<Vec<crate::proto::wire::CertCheck>> {
        match self.call(Request::CheckCerts {
            node_id: node_id.into(),
        })? {
            Response::CertChecks(c) => Ok(c),
            r => Err(unexpected("CheckCerts", r)),
        }
    }

    pub fn status(&mut self, node_id: &str) -> Result<ProvisioningStatus> {
        match self.call(Request::GetProvisioningStatus {
            node_id: node_id.into(),
        })? {
            Response::Status(s) => Ok(s),
            r => Err(unexpected("GetProvisioningStatus", r)),
        }
    }

    pub fn cert_types(&mut self, node_id: &str) -> Result<Vec<String>> {
        match self.call(Request::GetCertTypes {
            node_id: node_id.into(),
        })? {
            Response::CertTypes(t) => Ok(t),
            r => Err(unexpected("GetCertTypes", r)),
        }
    }

    fn done(&mut self, request: Request) -> Result<()> {
        let op = request.name();
        match self.call(request)? {
            Response::Done => Ok(()),
            r => Err(unexpected(op, r)),
        }
    }

    pub fn start_provisioning(&mut self, node_id: &str, password: &Secret) -> Result<()> {
        self.done(Request::StartProvisioning {
            node_id: node_id.into(),
            password: password.clone(),
        })
    }

    pub fn create_key(&mut self, node_id: &str, cert_type: &str, subject: &str, password: &Secret) -> Result<String> {
        match self.call(Request::CreateKey {
            node_id: node_id.into(),
            cert_type: cert_type.into(),
            subject: subject.into(),
            password: password.clone(),
        })? {
            Response::Csr { pem } => Ok(pem),
            r => Err(unexpected("CreateKey", r)),
        }
    }

    /// RenewNow: the module's configured renewal run by iamd now; the certificate applied.
    pub fn renew_now(&mut self, node_id: &str, cert_type: &str) -> Result<CertInfo> {
        match self.call(Request::RenewNow {
            node_id: node_id.into(),
            cert_type: cert_type.into(),
        })? {
            Response::Applied(c) => Ok(c),
            r => Err(unexpected("RenewNow", r)),
        }
    }

    /// ScepEnroll: the node gets the CSR of its pending key signed by the SCEP server at
    /// `url`, of the CA with `ca_fingerprint`; the chain PEM. An empty `challenge`: none.
    #[allow(clippy::too_many_arguments)]
    pub fn scep_enroll(
        &mut self,
        node_id: &str,
        cert_type: &str,
        csr_pem: &str,
        url: &str,
        ca_fingerprint: &crate::codec::Fingerprint,
        challenge: &Secret,
        password: &Secret,
    ) -> Result<String> {
        match self.call(Request::ScepEnroll {
            node_id: node_id.into(),
            cert_type: cert_type.into(),
            csr_pem: csr_pem.into(),
            url: url.into(),
            ca_fingerprint: ca_fingerprint.to_string(),
            challenge: challenge.clone(),
            password: password.clone(),
        })? {
            Response::Chain { pem } => Ok(pem),
            r => Err(unexpected("ScepEnroll", r)),
        }
    }

    pub fn apply_cert(&mut self, node_id: &str, cert_type: &str, chain_pem: &str) -> Result<CertInfo> {
        match self.call(Request::ApplyCert {
            node_id: node_id.into(),
            cert_type: cert_type.into(),
            chain_pem: chain_pem.into(),
        })? {
            Response::Applied(c) => Ok(c),
            r => Err(unexpected("ApplyCert", r)),
        }
    }

    pub fn finish_provisioning(&mut self, node_id: &str, password: &Secret) -> Result<()> {
        self.done(Request::FinishProvisioning {
            node_id: node_id.into(),
            password: password.clone(),
        })
    }

    pub fn deprovision(&mut self, node_id: &str, password: &Secret) -> Result<()> {
        self.done(Request::Deprovision {
            node_id: node_id.into(),
            password: password.clone(),
        })
    }

    pub fn pause(&mut self, node_id: &str) -> Result<()> {
        self.done(Request::PauseNode {
            node_id: node_id.into(),
        })
    }

    pub fn resume(&mut self, node_id: &str) -> Result<()> {
        self.done(Request::ResumeNode {
            node_id: node_id.into(),
        })
    }

    /// FinishBootstrap: the factory half of enrollment is done (empty URL, anchor and
    /// token: the node's configuration's, and no claim token).
    pub fn finish_bootstrap(
        &mut self,
        node_id: &str,
        password: &Secret,
        est_url: &str,
        anchor_pem: &str,
        claim_token: &Secret,
    ) -> Result<()> {
        self.done(Request::FinishBootstrap {
            node_id: node_id.into(),
            password: password.clone(),
            est_url: est_url.into(),
            anchor_pem: anchor_pem.into(),
            claim_token: claim_token.clone(),
        })
    }

    pub fn release_quarantine(&mut self, node_id: &str, password: &Secret) -> Result<()> {
        self.done(Request::ReleaseQuarantine {
            node_id: node_id.into(),
            password: password.clone(),
        })
    }

    pub fn enrollment_status(&mut self, node_id: &str) -> Result<crate::proto::wire::EnrollmentStatus> {
        match self.call(Request::GetEnrollmentStatus {
            node_id: node_id.into(),
        })? {
            Response::Enrollment(s) => Ok(s),
            r => Err(unexpected("GetEnrollmentStatus", r)),
        }
    }

    /// ForgetNode, on the main node: the node leaves the registry.
    pub fn forget_node(&mut self, node_id: &str) -> Result<()> {
        self.done(Request::ForgetNode {
            node_id: node_id.into(),
        })
    }

    pub fn node_ids(&mut self) -> Result<Vec<String>> {
        match self.call(Request::GetAllNodeIds)? {
            Response::NodeIds(ids) => Ok(ids),
            r => Err(unexpected("GetAllNodeIds", r)),
        }
    }

    pub fn register_instance(
        &mut self,
        instance: InstanceIdent,
        permissions: Vec<ServerPermissions>,
    ) -> Result<Secret> {
        match self.call(Request::RegisterInstance { instance, permissions })? {
            Response::Secret(s) => Ok(s),
            r => Err(unexpected("RegisterInstance", r)),
        }
    }

    pub fn unregister_instance(&mut self, instance: InstanceIdent) -> Result<()> {
        self.done(Request::UnregisterInstance { instance })
    }

    pub fn permissions(&mut self, secret: &Secret, server: &str) -> Result<(InstanceIdent, Vec<(String, String)>)> {
        match self.call(Request::GetPermissions {
            secret: secret.clone(),
            functional_server_id: server.into(),
        })? {
            Response::Permissions { instance, entries } => Ok((instance, entries)),
            r => Err(unexpected("GetPermissions", r)),
        }
    }

    pub fn system_info(&mut self) -> Result<(String, String, String)> {
        match self.call(Request::GetSystemInfo)? {
            Response::SystemInfo {
                system_id,
                unit_model,
                version,
            } => Ok((system_id, unit_model, version)),
            r => Err(unexpected("GetSystemInfo", r)),
        }
    }

    pub fn subjects(&mut self) -> Result<Vec<String>> {
        match self.call(Request::GetSubjects)? {
            Response::Subjects(s) => Ok(s),
            r => Err(unexpected("GetSubjects", r)),
        }
    }

    /// Start a subscription (`SubscribeSubjectsChanged`, `SubscribeNodeChanged`); its
    /// events are then read with [`Client::next_event`].
    pub fn subscribe(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        match self.call(request)? {
            Response::Subscribed => Ok(id),
            r => Err(unexpected("Subscribe", r)),
        }
    }

    /// Wait for the next event of subscription `id`, however long it takes.
    pub fn next_event(&mut self, id: u64) -> Result<Event> {
        if let Some(at) = self.queued.iter().position(|(i, _)| *i == id) {
            let (_, body) = self.queued.remove(at).expect("found above");
            return Ok(wire::decode_body(&body)?);
        }
        self.stream
            .set_read_timeout(None)
            .map_err(|e| Error::internal(format!("socket timeouts: {e}")))?;
        loop {
            let (header, body) = transport::read_frame_blocking(&mut self.stream, self.wire.limit)?
                .ok_or_else(|| Error::unavailable("iamd closed the connection"))?;
            match header.kind {
                FrameKind::Event if header.id == id => return Ok(wire::decode_body(&body)?),
                FrameKind::Error if header.id == id || header.id == 0 => {
                    return Err(wire::decode_body::<Error>(&body)?)
                }
                _ => continue,
            }
        }
    }
}
