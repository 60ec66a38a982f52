//! The PKCS#11 key store: keys generated inside a token, addressed by `CKA_ID` and `CKA_LABEL`.
//!
//! One library context per module path, initialised once per process and shared. The token
//! is looked up by label, serial or slot each time a session is opened (a slot id changes
//! after `C_InitToken` on SoftHSM). A session broken by a token error is reopened once. A
//! lookup that finds nothing, or no token, initialises the library again (at most every
//! 2 s) and looks once more, so a token that went away and came back is used again
//! without a restart, and one that is away is named as absent.
//! Every failure names the token, the step and the CKR return value.

use super::{KeyId, KeyStore, ObjectKind, PublicKey, StoredObject};
use crate::codec::der;
use crate::config::{Algorithm, Pkcs11Config, StoreConfig, TokenSelector};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Length of the random user PIN iamd sets (hex characters: 128 bits).
const USER_PIN_BYTES: usize = 16;

/// One loaded PKCS#11 library, shared by every store that names it, for the whole process.
/// It may be initialised again (`C_Finalize`, `C_Initialize`) when a token went away and
/// came back: `generation` counts those, and a session opened under an older generation is
/// never used nor closed again (its handle number may belong to a new session by then).
/// Every use of a session holds `in_use` for reading; re-initialising holds it for writing.
struct Library {
    ctx: Pkcs11,
    generation: std::sync::atomic::AtomicU64,
    in_use: std::sync::RwLock<()>,
    last_reinit: Mutex<Option<std::time::Instant>>,
}

/// A library is initialised again at most this often (a token that is truly gone must not
/// cost a re-initialisation per lookup).
const REINIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a token failed as a device would (rather than refusing one request).
fn device_failed(e: &Error) -> bool {
    matches!(&e.kind, ErrorKind::KeyStore(rv)
        if matches!(rv.as_str(), "CKR_GENERAL_ERROR" | "CKR_DEVICE_ERROR" | "CKR_DEVICE_REMOVED" | "CKR_CRYPTOKI_NOT_INITIALIZED"))
}

/// Every library loaded, by path.
type Libraries = Mutex<Vec<(PathBuf, std::sync::Arc<Library>)>>;

fn library(path: &Path) -> Result<std::sync::Arc<Library>> {
    static LIBRARIES: OnceLock<Libraries> = OnceLock::new();
    let mut all = crate::sys::lock(LIBRARIES.get_or_init(Default::default));
    if let Some((_, l)) = all.iter().find(|(p, _)| p == path) {
        return Ok(l.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        Error::new(
            ErrorKind::KeyStore("load".into()),
            format!("cannot load PKCS#11 library {}: {e}", path.display()),
        )
    })?;
    initialize(&ctx, path)?;
    let lib = std::sync::Arc::new(Library {
        ctx,
        generation: Default::default(),
        in_use: Default::default(),
        last_reinit: Default::default(),
    });
    all.push((path.to_path_buf(), lib.clone()));
    Ok(lib)
}

fn initialize(ctx: &Pkcs11, path: &Path) -> Result<()> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(ck_error(
            e,
            &format!("PKCS#11 library {}", path.display()),
            "C_Initialize",
        )),
    }
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c == '(' {
            break;
        }
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn ck_error(e: CkError, token: &str, step: &str) -> Error {
    match e {
        CkError::Pkcs11(rv, func) => {
            let name = ckr_name(rv);
            let func = format!("{func:?}");
            let kind = match rv {
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinLocked => ErrorKind::Unauthorized,
                _ => ErrorKind::KeyStore(name.clone()),
            };
            let hint = if kind == ErrorKind::Unauthorized {
                " (wrong password?)"
            } else {
                ""
            };
            Error::new(kind, format!("{token}: {step}: C_{func} returned {name}{hint}"))
        }
        other => Error::new(
            ErrorKind::KeyStore("CKR_GENERAL_ERROR".into()),
            format!("{token}: {step}: {other}"),
        ),
    }
}

/// Return values after which a fresh session may succeed.
fn session_broken(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::TokenNotPresent
                | RvError::DeviceRemoved
                | RvError::DeviceError,
            _
        )
    )
}

/// What iamd reads of an object on the token to list it, or to tell one that a creation
/// cut off left behind.
struct Seen {
    /// `None`: a class iamd does not make.
    kind: Option<ObjectKind>,
    token: bool,
    label: Vec<u8>,
    id: Vec<u8>,
}

impl Seen {
    /// An object whose attributes the token calls invalid (`CKR_ATTRIBUTE_VALUE_INVALID`:
    /// SoftHSM, for an object whose file was made and not one attribute written yet, as
    /// it has no class) is seen as a remnant too: no application can use an object
    /// without a class. `None` on any other failure: the object is left.
    fn read(s: &Session, h: ObjectHandle) -> Option<Seen> {
        let attributes = [
            AttributeType::Class,
            AttributeType::Token,
            AttributeType::Label,
            AttributeType::Id,
        ];
        let mut seen = Seen {
            kind: None,
            token: true,
            label: Vec::new(),
            id: Vec::new(),
        };
        let read = match s.get_attributes(h, &attributes) {
            Err(CkError::Pkcs11(RvError::AttributeValueInvalid, _)) => {
                seen.token = false;
                return Some(seen);
            }
            r => r.ok()?,
        };
        for a in read {
            match a {
                Attribute::Class(c) if c == ObjectClass::PRIVATE_KEY => seen.kind = Some(ObjectKind::PrivateKey),
                Attribute::Class(c) if c == ObjectClass::PUBLIC_KEY => seen.kind = Some(ObjectKind::PublicKey),
                Attribute::Class(c) if c == ObjectClass::CERTIFICATE => seen.kind = Some(ObjectKind::Certificate),
                Attribute::Token(t) => seen.token = t,
                Attribute::Label(l) => seen.label = l,
                Attribute::Id(i) => seen.id = i,
                _ => {}
            }
        }
        Some(seen)
    }

    /// Left by an object creation cut off. SoftHSM creates a new object's file, writes its
    /// default attributes one by one (`CKA_TOKEN` false, no label, no id), then the
    /// template in one transaction: iamd makes no session objects, so an object its session
    /// sees that is not a token object is such a remnant. So is a key or certificate with
    /// no label and no id, or an id of iamd's size. Others' objects keep a label. On a token
    /// shared with others (`shared`), where another application may make objects with
    /// neither, only a session object or one with an id of iamd's size.
    fn incomplete(&self, shared: bool) -> bool {
        !self.token
            || (self.kind.is_some() && self.label.is_empty() && ((self.id.is_empty() && !shared) || self.ours_by_id()))
    }

    /// Whether the id is of the size iamd gives its objects.
    fn ours_by_id(&self) -> bool {
        self.id.len() == std::mem::size_of::<KeyId>()
    }
}

pub struct Pkcs11Store {
    config: Pkcs11Config,
    /// The library, loaded and initialised on first use (iamd listens before that).
    loaded: Mutex<Option<std::sync::Arc<Library>>>,
    /// The logged-in session, with the library generation it was opened in.
    session: Mutex<Option<(u64, Session)>>,
    /// Whether sessions are released after each operation ([`Pkcs11Store::releases_objects`]),
    /// settled once the library has said who made it.
    releases: OnceLock<bool>,
}

/// Why a static build cannot use this module, if it cannot. A static glibc program loads a
/// module's dependencies in a link namespace of their own, and tpm2-pkcs11's do not survive
/// there: through the tabrmd TCTI (GDBus; tctildr's first choice when `TPM2_PKCS11_TCTI` is
/// unset) GLib aborts or crashes iamd inside `C_Initialize`, and through any TCTI the first
/// TPM error crashes it in `Tss2_RC_Decode` (libtss2-rc's thread-local buffer). So the
/// static build refuses tpm2-pkcs11 whatever the TCTI, naming the dynamic build.
/// The module is recognised by its file name, or by the name of the file a link points to.
fn static_build_refuses(library: &Path) -> Option<String> {
    let is_tpm2 = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("tpm2_pkcs11"))
    };
    if !is_tpm2(library) && !std::fs::canonicalize(library).is_ok_and(|real| is_tpm2(&real)) {
        return None;
    }
    Some(format!(
        "cannot use {} from the static build: its TPM libraries crash a static program (GLib in \
         the tabrmd TCTI, thread-local storage in libtss2-rc on the first TPM error); use the \
         dynamic build (`make build`, or the Yocto recipe's)",
        library.display()
    ))
}

/// Whether this build can load the library a store names, found without loading it (for
/// `iamd --check-config` as well as for opening the store).
pub fn loadable(config: &Pkcs11Config) -> Result<()> {
    if !config.library.exists() {
        return Err(Error::new(
            ErrorKind::KeyStore("load".into()),
            format!("cannot load PKCS#11 library {}: no such file", config.library.display()),
        ));
    }
    if cfg!(target_feature = "crt-static") {
        if let Some(why) = static_build_refuses(&config.library) {
            return Err(Error::new(ErrorKind::KeyStore("load".into()), why));
        }
    }
    Ok(())
}

impl Pkcs11Store {
    pub fn new(config: Pkcs11Config) -> Result<Self> {
        loadable(&config)?;
        Ok(Pkcs11Store {
            config,
            loaded: Mutex::new(None),
            session: Mutex::new(None),
            releases: OnceLock::new(),
        })
    }

    /// The library, loaded and initialised the first time it is needed.
    fn lib(&self) -> Result<std::sync::Arc<Library>> {
        let mut loaded = crate::sys::lock(&self.loaded);
        if let Some(l) = &*loaded {
            return Ok(l.clone());
        }
        let l = library(&self.config.library)?;
        *loaded = Some(l.clone());
        Ok(l)
    }

    fn generation(&self) -> u64 {
        crate::sys::lock(&self.loaded)
            .as_ref()
            .map_or(0, |l| l.generation.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Forget this store's session: closed if it is of the current generation, left alone
    /// (never closed) if the library was initialised again since.
    fn drop_session(&self, slot: &mut Option<(u64, Session)>) {
        if let Some((generation, session)) = slot.take() {
            if generation != self.generation() {
                std::mem::forget(session);
            }
        }
    }

    /// A lookup found nothing where the database says there is something: the token may
    /// have gone away, and maybe come back (SoftHSM, for one, sees a token directory that
    /// returned only once initialised again). Initialise the library again (at most once per
    /// [`REINIT_INTERVAL`]) and look for the token: `Ok(true)` to look again, `Ok(false)` if
    /// nothing changed, an error naming the token as absent if it is not there.
    fn revalidate(&self, why: &str) -> Result<bool> {
        let lib = self.lib()?;
        let due = {
            let mut last = crate::sys::lock(&lib.last_reinit);
            let due = last.is_none_or(|t| t.elapsed() >= REINIT_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            let _all = lib.in_use.write().unwrap_or_else(|e| e.into_inner());
            let finalised = lib.ctx.clone().finalize();
            lib.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            initialize(&lib.ctx, &self.config.library)?;
            crate::log_notice!(
                "{}: {why}; the PKCS#11 library {} was initialised again ({})",
                self.describe(),
                self.config.library.display(),
                match finalised {
                    Ok(()) => "finalised first".to_string(),
                    Err(e) => format!("C_Finalize: {e}"),
                }
            );
        }
        let _using = lib.in_use.read().unwrap_or_else(|e| e.into_inner());
        match self.find_slot(false) {
            Ok(_) => Ok(due),
            Err(e) if e.kind == ErrorKind::KeyStore("CKR_TOKEN_NOT_PRESENT".into()) => Err(Error::new(
                e.kind,
                format!(
                    "{}: no such token in {}: it is absent (a token that went away is used again once it is back)",
                    self.describe(),
                    self.config.library.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// `lookup`, and once more after [`revalidate`](Self::revalidate) if it found nothing
    /// or found no token (an absent token is an error that says so).
    fn looked_up<T>(&self, lookup: impl Fn() -> Result<Option<T>>) -> Result<Option<T>> {
        match lookup() {
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) => match self.revalidate("an object was missing")? {
                true => lookup(),
                false => Ok(None),
            },
            Err(e) if e.kind == ErrorKind::KeyStore("CKR_TOKEN_NOT_PRESENT".into()) => {
                self.revalidate("the token was not present")?;
                lookup()
            }
            Err(e) => Err(e),
        }
    }

    fn err(&self, step: &str) -> impl Fn(CkError) -> Error + '_ {
        let token = self.describe();
        let step = step.to_string();
        move |e| ck_error(e, &token, &step)
    }

    /// The slot holding the configured token; with `for_init`, an uninitialised token
    /// stands in for a label that no token has yet.
    fn find_slot(&self, for_init: bool) -> Result<Slot> {
        let slots = self.lib()?.ctx.get_slots_with_token().map_err(self.err("list slots"))?;
        let info = |s: &Slot| self.lib()?.ctx.get_token_info(*s).map_err(self.err("read token info"));
        // A token whose information cannot be read (SoftHSM killed inside C_InitToken keeps
        // a token.object with its label only) is passed over by a search by serial or
        // label, which could never match it; if nothing else matches, its error is the
        // answer.
        let mut unreadable: Option<(Slot, Error)> = None;
        let mut readable = |s: &Slot| match info(s) {
            Ok(i) => Some(i),
            Err(e) => {
                crate::log_debug!("slot {}: {e}; passed over", s.id());
                unreadable.get_or_insert((*s, e));
                None
            }
        };
        let found = match &self.config.token {
            TokenSelector::SlotId(id) => slots.iter().find(|s| s.id() == *id).copied(),
            TokenSelector::SlotIndex(i) => slots.get(*i as usize).copied(),
            TokenSelector::Serial(serial) => slots
                .iter()
                .find(|s| readable(s).is_some_and(|i| i.serial_number().trim() == serial))
                .copied(),
            TokenSelector::Label(label) => {
                let mut hit = slots
                    .iter()
                    .find(|s| readable(s).is_some_and(|i| i.token_initialized() && i.label().trim() == label))
                    .copied();
                if hit.is_none() && for_init {
                    hit = slots
                        .iter()
                        .find(|s| readable(s).is_some_and(|i| !i.token_initialized()))
                        .copied();
                    if let (Some(free), Some((bad, e))) = (hit, &unreadable) {
                        crate::log_warn!(
                            "slot {} cannot be read ({e}); initialising slot {} instead",
                            bad.id(),
                            free.id()
                        );
                    }
                }
                hit
            }
        };
        if found.is_none() {
            if let Some((_, e)) = unreadable {
                return Err(e);
            }
        }
        found.ok_or_else(|| {
            Error::new(
                ErrorKind::KeyStore("CKR_TOKEN_NOT_PRESENT".into()),
                format!(
                    "{}: no such token in {}",
                    self.describe(),
                    self.config.library.display()
                ),
            )
        })
    }

    fn read_user_pin(&self) -> Result<AuthPin> {
        let text = std::fs::read_to_string(&self.config.user_pin_file).map_err(|e| {
            Error::wrong_state(format!(
                "{}: cannot read user PIN file {}: {e} (is the node provisioned?)",
                self.describe(),
                self.config.user_pin_file.display()
            ))
        })?;
        let text = zeroize::Zeroizing::new(text);
        Ok(AuthPin::from(text.trim_end_matches('\n')))
    }

    fn open_user_session(&self) -> Result<Session> {
        let slot = self.find_slot(false)?;
        let session = self
            .lib()?
            .ctx
            .open_rw_session(slot)
            .map_err(self.err("open session"))?;
        let pin = self.read_user_pin()?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            // The user PIN is iamd's own, or on a shared token the one it was given: not the
            // provisioning password, so no guess of it (nor counted as one).
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLenRange | RvError::PinLocked), func)) => {
                Err(Error::new(
                    ErrorKind::KeyStore(ckr_name(rv)),
                    format!(
                        "{}: user login: C_{func:?} returned {}: the token does not take the user PIN of {}",
                        self.describe(),
                        ckr_name(rv),
                        self.config.user_pin_file.display()
                    ),
                ))
            }
            Err(e) => Err(self.err("user login")(e)),
        }
    }

    /// Run `f` in the logged-in user session, reopening it once if the token broke it (and
    /// opening a new one if the library was initialised again since it was opened).
    /// Run `f` on this store's session (see [`Pkcs11Store::session_once`]). A token that
    /// fails as a device (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED: a TPM
    /// whose resource manager restarted, a token unplugged; or a library whose last
    /// initialisation failed meanwhile) gets the library initialised again, at most once per [`REINIT_INTERVAL`], and `f` one more try.
    fn with_session<T>(&self, step: &str, f: impl Fn(&Session) -> std::result::Result<T, CkError>) -> Result<T> {
        match self.session_once(step, &f) {
            Err(e) if device_failed(&e) => match self.revalidate("the token failed as a device")? {
                true => self.session_once(step, &f),
                false => Err(e),
            },
            r => r,
        }
    }

    /// The same for a step that makes objects (key generation, storing a certificate): not
    /// tried again, since the failed try may have made some; the library is initialised
    /// again for the next request.
    fn with_session_once<T>(&self, step: &str, f: impl Fn(&Session) -> std::result::Result<T, CkError>) -> Result<T> {
        let r = self.session_once(step, &f);
        if let Err(e) = &r {
            if device_failed(e) {
                let _ = self.revalidate("the token failed as a device");
            }
        }
        r
    }

    fn session_once<T>(&self, step: &str, f: &impl Fn(&Session) -> std::result::Result<T, CkError>) -> Result<T> {
        let lib = self.lib()?;
        let _using = lib.in_use.read().unwrap_or_else(|e| e.into_inner());
        let mut guard = crate::sys::lock(&self.session);
        for attempt in 0..2 {
            if guard.as_ref().is_some_and(|(g, _)| *g != self.generation()) {
                self.drop_session(&mut guard);
            }
            if guard.is_none() {
                *guard = Some((self.generation(), self.open_user_session()?));
            }
            let (_, session) = guard.as_ref().expect("opened above");
            let r = f(session);
            match r {
                Err(e) if attempt == 0 && session_broken(&e) => {
                    crate::log_warn!("{}: {step}: session broken ({}), reopening", self.describe(), e);
                    self.drop_session(&mut guard);
                }
                other => {
                    if self.releases_objects() {
                        // Logging out unloads every object the module loaded into the TPM.
                        let _ = session.logout();
                        self.drop_session(&mut guard);
                    }
                    return other.map_err(self.err(step));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// One signature by the private key `label`/`id`, or `None` if the token has no such key.
    fn sign_once(&self, label: &str, id: &KeyId, algorithm: Algorithm, message: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_session("sign", |s| {
            let Some(key) = Self::find(s, ObjectClass::PRIVATE_KEY, label, id)?.first().copied() else {
                return Ok(None);
            };
            // Tokens such as SoftHSM lack CKM_ECDSA_SHA384: hash here, sign the digest there.
            Ok(Some(match algorithm {
                Algorithm::EcdsaP384 => s.sign(
                    &Mechanism::Ecdsa,
                    key,
                    ring::digest::digest(&ring::digest::SHA384, message).as_ref(),
                )?,
                Algorithm::EcdsaP256 => s.sign(
                    &Mechanism::Ecdsa,
                    key,
                    ring::digest::digest(&ring::digest::SHA256, message).as_ref(),
                )?,
                Algorithm::Rsa2048 => s.sign(&Mechanism::Sha256RsaPkcs, key, message)?,
            }))
        })
    }

    fn find(
        session: &Session,
        class: ObjectClass,
        label: &str,
        id: &KeyId,
    ) -> std::result::Result<Vec<ObjectHandle>, CkError> {
        session.find_objects(&[
            Attribute::Class(class),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
    }

    /// Initialise the token with `password` as SO PIN: wipes it, and checks the password
    /// against the SO PIN it had if it was initialised before.
    fn init_token(&self, password: &Secret) -> Result<Slot> {
        self.drop_session(&mut crate::sys::lock(&self.session));
        let slot = self.find_slot(true)?;
        let info = self
            .lib()?
            .ctx
            .get_token_info(slot)
            .map_err(self.err("read token info"))?;
        let (min, max) = (info.min_pin_length(), info.max_pin_length());
        let len = password.expose().len();
        if len < min || len > max {
            return Err(Error::invalid(format!(
                "{}: the password has {len} characters; this token takes {min} to {max}",
                self.describe()
            )));
        }
        let so_pin = AuthPin::from(password.expose());
        if let Err(e) = self.lib()?.ctx.init_token(slot, &so_pin, &self.config.init_label) {
            // A token that cannot be initialised twice (tpm2-pkcs11: "Token already
            // initialized", CKR_ARGUMENTS_BAD) is emptied under its SO PIN instead. A wrong
            // SO PIN stays the error it is.
            let refused_again = info.token_initialized()
                && matches!(&e, CkError::Pkcs11(rv, _)
                    if !matches!(rv, RvError::PinIncorrect | RvError::PinLocked | RvError::PinLenRange));
            let e = self.err("initialise token")(e);
            if !refused_again {
                return Err(e);
            }
            crate::log_notice!("{e}: the token cannot be initialised again; emptying it under its SO PIN");
            self.empty_token(slot, password)?;
            return Ok(slot);
        }
        // SoftHSM moves a freshly initialised token to a new slot: look it up again.
        self.find_slot(false)
    }

    /// Log in as the security officer with `password` and set a new random user PIN, which
    /// is returned (the session stays logged in as SO).
    fn new_user_pin(&self, session: &Session, password: &Secret) -> Result<zeroize::Zeroizing<String>> {
        let so_pin = AuthPin::from(password.expose());
        match session.login(UserType::So, Some(&so_pin)) {
            // Left logged in by a C_InitToken that checked the SO PIN and then failed
            // (SoftHSM: CKR_DEVICE_ERROR, an object file without its lock file). The
            // password is checked all the same: log out and in again.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                session.logout().map_err(self.err("security officer logout"))?;
                session.login(UserType::So, Some(&so_pin))
            }
            r => r,
        }
        .map_err(self.err("security officer login"))?;
        let mut random = [0u8; USER_PIN_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| Error::internal("the OS random number generator failed"))?;
        let pin = zeroize::Zeroizing::new(crate::codec::hex(&random));
        zeroize::Zeroize::zeroize(&mut random);
        session
            .init_pin(&AuthPin::from(pin.as_str()))
            .map_err(self.err("set user PIN"))?;
        Ok(pin)
    }

    /// Whether each operation's session is logged out and closed after it (`release_objects`;
    /// by default for tpm2-pkcs11). tpm2-pkcs11 keeps every key it has used loaded in the TPM
    /// until its session logs out, and the kernel's resource manager (`/dev/tpmrm0`) keeps at
    /// most three transient objects per client: the second key made or used then fails
    /// with TPM_RC_OBJECT_MEMORY.
    /// Asked at every operation: the library's answer is kept once it has given one, not
    /// asked again each time.
    fn releases_objects(&self) -> bool {
        if let Some(r) = self.config.release_objects.or(self.releases.get().copied()) {
            return r;
        }
        match self.is_tpm2_pkcs11() {
            Some(tpm2) => *self.releases.get_or_init(|| tpm2),
            None => false,
        }
    }

    /// Whether the library is tpm2-pkcs11, by its manufacturer; `None` while it cannot be
    /// loaded.
    fn is_tpm2_pkcs11(&self) -> Option<bool> {
        let lib = self.lib().ok()?;
        Some(
            lib.ctx
                .get_library_info()
                .is_ok_and(|i| i.manufacturer_id().contains("tpm2-software")),
        )
    }

    /// Whether the module derives key usages from its own objects (tpm2-pkcs11).
    fn derives_usages(&self) -> bool {
        self.is_tpm2_pkcs11().unwrap_or(false)
    }

    /// On a token shared with others: destroy the keys and certificates iamd made, those
    /// labelled with one of `ours` and with an id of iamd's size; nothing else is touched.
    /// Logging in with the user PIN given checks it first.
    fn remove_ours(&self, ours: &[&str]) -> Result<usize> {
        self.with_session_once("remove this node's objects", |s| {
            let mut removed = 0;
            for h in s.find_objects(&[])? {
                let Some(seen) = Seen::read(s, h) else { continue };
                if seen.kind.is_some() && seen.ours_by_id() && ours.iter().any(|l| l.as_bytes() == seen.label) {
                    s.destroy_object(h)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    /// Destroy every object of an initialised token: an SO login with `password` (which must
    /// be the SO PIN it was initialised with), a fresh user PIN, and every object the user
    /// sees destroyed. What C_InitToken does, for tokens that refuse it once initialised.
    fn empty_token(&self, slot: Slot, password: &Secret) -> Result<()> {
        let session = self
            .lib()?
            .ctx
            .open_rw_session(slot)
            .map_err(self.err("open session"))?;
        let pin = self.new_user_pin(&session, password)?;
        session.logout().map_err(self.err("security officer logout"))?;
        session
            .login(UserType::User, Some(&AuthPin::from(pin.as_str())))
            .map_err(self.err("user login"))?;
        let objects = session.find_objects(&[]).map_err(self.err("list objects"))?;
        for o in objects {
            session.destroy_object(o).map_err(self.err("destroy object"))?;
        }
        Ok(())
    }

    /// A public key object's value, read with its type and curve in one call.
    fn read_public_key(session: &Session, handle: ObjectHandle) -> std::result::Result<Option<PublicKey>, CkError> {
        let attrs = session.get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )?;
        let (mut rsa, mut params, mut point, mut n, mut e) = (false, None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(k) => rsa = k == KeyType::RSA,
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        Ok(match (rsa, params.as_deref(), point, n, e) {
            (true, _, _, Some(n), Some(e)) if n.len() == 256 => Some(PublicKey {
                algorithm: Algorithm::Rsa2048,
                raw: der::rsa_public_key(&n, &e),
            }),
            (false, Some(der::P384_PARAMS), Some(p), _, _) => Some(PublicKey {
                algorithm: Algorithm::EcdsaP384,
                raw: der::ec_point(&p, 97).to_vec(),
            }),
            (false, Some(der::P256_PARAMS), Some(p), _, _) => Some(PublicKey {
                algorithm: Algorithm::EcdsaP256,
                raw: der::ec_point(&p, 65).to_vec(),
            }),
            _ => None,
        })
    }
}

/// RFC 7512 percent-encoding of an attribute value: everything but the unreserved characters.
fn pct(s: &[u8]) -> String {
    s.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl KeyStore for Pkcs11Store {
    fn describe(&self) -> String {
        format!("PKCS#11 {}", self.config.token)
    }

    fn is(&self, config: &StoreConfig) -> bool {
        matches!(config, StoreConfig::Pkcs11(p) if p.library == self.config.library && p.token == self.config.token)
    }

    fn take_ownership(&self, password: &Secret, ours: &[&str]) -> Result<()> {
        if self.config.shared {
            // Not ours to initialise: the user PIN is the one given, and only our objects go.
            self.drop_session(&mut crate::sys::lock(&self.session));
            let removed = self.remove_ours(ours)?;
            if removed > 0 {
                crate::log_notice!(
                    "{}: removed {removed} object(s) of this node's certificate types",
                    self.describe()
                );
            }
            return Ok(());
        }
        let lib = self.lib()?;
        let _using = lib.in_use.read().unwrap_or_else(|e| e.into_inner());
        let slot = self.init_token(password)?;
        let session = self
            .lib()?
            .ctx
            .open_rw_session(slot)
            .map_err(self.err("open session"))?;
        let user_pin = self.new_user_pin(&session, password)?;
        crate::store::atomic_file::write(&self.config.user_pin_file, user_pin.as_bytes(), 0o600).map_err(|e| {
            Error::internal(format!(
                "cannot write user PIN file {}: {e}",
                self.config.user_pin_file.display()
            ))
        })?;
        drop(session);
        *crate::sys::lock(&self.session) = Some((self.generation(), self.open_user_session()?));
        Ok(())
    }

    fn wipe(&self, password: &Secret, ours: &[&str]) -> Result<()> {
        if self.config.shared {
            // The user PIN file was given, not made by iamd: it stays with the token.
            return self.remove_ours(ours).map(|_| ());
        }
        // A token that was never initialised holds nothing: wiping must not take it over.
        let initialised = match self.find_slot(false) {
            Ok(slot) => self
                .lib()?
                .ctx
                .get_token_info(slot)
                .map_err(self.err("read token info"))?
                .token_initialized(),
            Err(e) if e.kind == ErrorKind::KeyStore("CKR_TOKEN_NOT_PRESENT".into()) => false,
            Err(e) => return Err(e),
        };
        if initialised {
            self.init_token(password)?;
        }
        crate::store::atomic_file::remove(&self.config.user_pin_file)
            .map_err(|e| Error::internal(format!("cannot remove {}: {e}", self.config.user_pin_file.display())))
    }

    fn generate(&self, label: &str, id: &KeyId, algorithm: Algorithm) -> Result<PublicKey> {
        let common = |private: bool| {
            vec![
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Id(id.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Derive(false),
            ]
        };
        let mut public = common(false);
        public.extend([
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ]);
        let mut private = common(true);
        private.extend([
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            // RSA keys decrypt too: a SCEP answer's content key is encrypted to them.
            Attribute::Decrypt(algorithm == Algorithm::Rsa2048),
            Attribute::Unwrap(false),
        ]);
        let mechanism = match algorithm {
            Algorithm::EcdsaP384 | Algorithm::EcdsaP256 => {
                let params = if algorithm == Algorithm::EcdsaP384 {
                    der::P384_PARAMS
                } else {
                    der::P256_PARAMS
                };
                public.push(Attribute::EcParams(params.to_vec()));
                Mechanism::EccKeyPairGen
            }
            Algorithm::Rsa2048 => {
                public.push(Attribute::ModulusBits(2048.into()));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        // tpm2-pkcs11 derives CKA_VERIFY, CKA_ENCRYPT and CKA_DECRYPT from the TPM object's
        // attributes (its VERIFY follows DECRYPT) and refuses a template that states them
        // otherwise, after the TPM made the key (a transient object that, without a resource
        // manager, stays loaded). Its templates leave those usage attributes to it; what
        // makes the key safe (sensitive, never extractable, signing only in the token) is
        // in both.
        if self.derives_usages() {
            let keep =
                |a: &Attribute| !matches!(a, Attribute::Verify(_) | Attribute::Encrypt(_) | Attribute::Decrypt(_));
            public.retain(keep);
            private.retain(keep);
        }
        let key = self.with_session_once("generate key pair", |s| {
            let (pubk, _) = s.generate_key_pair(&mechanism, &public, &private)?;
            Self::read_public_key(s, pubk)
        })?;
        key.filter(|k| k.algorithm == algorithm).ok_or_else(|| {
            Error::new(
                ErrorKind::KeyStore("CKR_ATTRIBUTE_TYPE_INVALID".into()),
                format!("{}: generated key has no public value", self.describe()),
            )
        })
    }

    fn sign(&self, label: &str, id: &KeyId, algorithm: Algorithm, message: &[u8]) -> Result<Vec<u8>> {
        let raw = self.looked_up(|| self.sign_once(label, id, algorithm, message))?;
        let raw = raw.ok_or_else(|| {
            Error::not_found(format!(
                "{}: no private key {label}/{}",
                self.describe(),
                crate::codec::hex(id)
            ))
        })?;
        match algorithm {
            Algorithm::Rsa2048 => Ok(raw),
            _ => der::ecdsa_signature(&raw).ok_or_else(|| {
                Error::new(
                    ErrorKind::KeyStore("CKR_GENERAL_ERROR".into()),
                    format!("{}: token returned a malformed ECDSA signature", self.describe()),
                )
            }),
        }
    }

    fn decrypt(&self, label: &str, id: &KeyId, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let plain = self.looked_up(|| {
            self.with_session("decrypt", |s| {
                let Some(key) = Self::find(s, ObjectClass::PRIVATE_KEY, label, id)?.first().copied() else {
                    return Ok(None);
                };
                Ok(Some(s.decrypt(&Mechanism::RsaPkcs, key, ciphertext)?))
            })
        })?;
        plain.ok_or_else(|| {
            Error::not_found(format!(
                "{}: no private key {label}/{}",
                self.describe(),
                crate::codec::hex(id)
            ))
        })
    }

    fn public_key(&self, label: &str, id: &KeyId) -> Result<Option<PublicKey>> {
        self.looked_up(|| {
            self.with_session("read public key", |s| {
                let Some(h) = Self::find(s, ObjectClass::PUBLIC_KEY, label, id)?.first().copied() else {
                    return Ok(None);
                };
                Self::read_public_key(s, h)
            })
        })
    }

    fn store_certificate(&self, label: &str, id: &KeyId, cert_der: &[u8]) -> Result<()> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| Error::invalid(format!("certificate: {e}")))?;
        let template = vec![
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Subject(cert.tbs_certificate.subject.as_raw().to_vec()),
            Attribute::Issuer(cert.tbs_certificate.issuer.as_raw().to_vec()),
            Attribute::SerialNumber(der::tlv(0x02, cert.tbs_certificate.raw_serial())),
            Attribute::Value(cert_der.to_vec()),
        ];
        self.with_session_once("store certificate", |s| {
            for old in Self::find(s, ObjectClass::CERTIFICATE, label, id)? {
                s.destroy_object(old)?;
            }
            s.create_object(&template).map(|_| ())
        })
    }

    fn certificate(&self, label: &str, id: &KeyId) -> Result<Option<Vec<u8>>> {
        self.looked_up(|| {
            self.with_session("read certificate", |s| {
                let Some(h) = Self::find(s, ObjectClass::CERTIFICATE, label, id)?.first().copied() else {
                    return Ok(None);
                };
                Ok(match s.get_attributes(h, &[AttributeType::Value])?.pop() {
                    Some(Attribute::Value(v)) => Some(v),
                    _ => None,
                })
            })
        })
    }

    fn remove(&self, label: &str, id: &KeyId) -> Result<()> {
        self.with_session("remove key and certificate", |s| {
            for class in [
                ObjectClass::CERTIFICATE,
                ObjectClass::PRIVATE_KEY,
                ObjectClass::PUBLIC_KEY,
            ] {
                for h in Self::find(s, class, label, id)? {
                    s.destroy_object(h)?;
                }
            }
            Ok(())
        })
    }

    fn objects(&self) -> Result<Vec<StoredObject>> {
        self.with_session("list objects", |s| {
            let mut out = Vec::new();
            for h in s.find_objects(&[])? {
                let Some(seen) = Seen::read(s, h) else { continue };
                let kind = match seen.kind {
                    _ if seen.incomplete(self.config.shared) => ObjectKind::Incomplete,
                    Some(kind) => kind,
                    None => continue,
                };
                out.push(StoredObject {
                    label: String::from_utf8_lossy(&seen.label).into_owned(),
                    // Objects whose id is not one of ours are listed with a zero id.
                    id: <KeyId>::try_from(seen.id.as_slice()).unwrap_or_default(),
                    kind,
                });
            }
            out.sort();
            Ok(out)
        })
    }

    fn remove_incomplete(&self) -> Result<usize> {
        self.with_session("remove incomplete objects", |s| {
            let mut removed = 0;
            for h in s.find_objects(&[])? {
                if Seen::read(s, h).is_some_and(|o| o.incomplete(self.config.shared)) {
                    s.destroy_object(h)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    fn key_url(&self, label: &str, id: &KeyId) -> String {
        self.url(label, id, "private")
    }

    fn algorithms(&self) -> Result<Vec<Algorithm>> {
        use cryptoki::mechanism::MechanismType;
        let lib = self.lib()?;
        let slot = self.find_slot(true)?;
        let listed = lib.ctx.get_mechanism_list(slot).map_err(self.err("list mechanisms"))?;
        let info = |m: MechanismType| {
            listed
                .contains(&m)
                .then(|| lib.ctx.get_mechanism_info(slot, m).ok())
                .flatten()
        };
        // Key sizes in bits (PKCS#11 3.0 §2.3.2); some EC modules state bytes (32 to 66).
        let spans = |i: &cryptoki::mechanism::MechanismInfo, bits: usize, ec: bool| {
            let scale = |n: usize| if ec && n <= 66 { n * 8 } else { n };
            scale(i.min_key_size()) <= bits && bits <= scale(i.max_key_size())
        };
        let mut out = Vec::new();
        if let (Some(gen), Some(sign)) = (info(MechanismType::ECC_KEY_PAIR_GEN), info(MechanismType::ECDSA)) {
            if gen.generate_key_pair() && sign.sign() {
                for (bits, a) in [(384, Algorithm::EcdsaP384), (256, Algorithm::EcdsaP256)] {
                    if spans(&gen, bits, true) {
                        out.push(a);
                    }
                }
            }
        }
        if let (Some(gen), Some(sign)) = (
            info(MechanismType::RSA_PKCS_KEY_PAIR_GEN),
            info(MechanismType::SHA256_RSA_PKCS),
        ) {
            if gen.generate_key_pair() && sign.sign() && spans(&gen, 2048, false) {
                out.push(Algorithm::Rsa2048);
            }
        }
        Ok(out)
    }

    fn cert_url(&self, label: &str, id: &KeyId) -> String {
        self.url(label, id, "cert")
    }
}

impl Pkcs11Store {
    /// An RFC 7512 URI that openssl's pkcs11 engine and p11tool accept. It names the token
    /// and object only: the engine refuses query attributes it does not know, and the PIN
    /// is never put in a URL. Module path and PIN file come from the configuration.
    fn url(&self, label: &str, id: &KeyId, kind: &str) -> String {
        let token = match &self.config.token {
            TokenSelector::Serial(s) => format!("serial={}", pct(s.as_bytes())),
            _ => format!("token={}", pct(self.config.init_label.as_bytes())),
        };
        format!(
            "pkcs11:{token};object={};id={};type={kind}",
            pct(label.as_bytes()),
            pct(id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_are_spelled_as_in_the_standard() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::UserAlreadyLoggedIn), "CKR_USER_ALREADY_LOGGED_IN");
    }

    #[test]
    fn urls_percent_encode_per_rfc7512() {
        assert_eq!(pct(b"a b/c"), "a%20b%2Fc");
        assert_eq!(pct(&[0xab, 0x01]), "%AB%01");
    }

    #[test]
    fn the_static_build_refuses_tpm2_pkcs11_and_nothing_else() {
        let why =
            static_build_refuses(Path::new("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so")).expect("refused");
        assert!(why.contains("dynamic build"), "{why}");
        assert!(static_build_refuses(Path::new("/usr/lib/pkcs11/libtpm2_pkcs11.so.1")).is_some());
        assert_eq!(static_build_refuses(Path::new("/usr/lib/softhsm/libsofthsm2.so")), None);
        assert_eq!(
            static_build_refuses(Path::new("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")),
            None
        );
        // A link of another name to the module is the module.
        let dir = std::env::temp_dir().join(format!("aos-iam-tpm2-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (real, link) = (dir.join("libtpm2_pkcs11.so.1"), dir.join("token.so"));
        std::fs::write(&real, b"").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let refused = static_build_refuses(&link);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(refused.is_some());
    }
}
