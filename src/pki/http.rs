//! The HTTP/1.1 both enrollment protocols speak (EST over TLS, SCEP in the clear): their
//! URLs, and an answer read whole. The connection itself is [`crate::pki::dial`]'s.

use crate::error::{Error, Result};

/// An HTTP answer as [`parse_response`] reads it: status, headers (names lower-cased), body
/// (public for the fuzz targets).
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    /// The body's start as text, for errors.
    pub(crate) fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        t.chars().take(200).collect()
    }
}

/// The host, port and path (without its leading `/`) of `scheme://host[:port][/path]`, for
/// EST and SCEP URLs (`what` names which in errors).
pub fn split_url<'u>(url: &'u str, scheme: &str, default_port: u16, what: &str) -> Result<(String, u16, &'u str)> {
    // Errors show the URL without whatever stands before an `@`.
    let shown = redacted(url);
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| Error::invalid(format!("{what} URL {shown}: only {scheme}:// is allowed")))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.contains('@') {
        return Err(Error::invalid(format!(
            "{what} URL {shown}: credentials in a URL are not accepted (they would be shown wherever \
             the URL is); give them as the configuration's username and password_file"
        )));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse()
                .map_err(|_| Error::invalid(format!("{what} URL {shown}: bad port \"{p}\"")))?,
        ),
        _ => (authority.to_string(), default_port),
    };
    if host.is_empty() {
        return Err(Error::invalid(format!("{what} URL {shown}: no host")));
    }
    Ok((host, port, path))
}

/// `url` with whatever stands before an `@` in its authority replaced, for errors and logs.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!(
            "{scheme}{}***{}",
            if scheme.is_empty() { "" } else { "://" },
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// An HTTP/1.1 answer read whole (EST and SCEP): status line, headers, and the body by
/// Content-Length or chunked encoding; anything else is a `protocol` error.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::protocol("no HTTP header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| Error::protocol("HTTP header is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(Error::protocol(format!("not an HTTP/1 answer: \"{status_line}\"")));
    }
    let status: u16 = code
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::protocol(format!("bad HTTP status line \"{status_line}\"")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| Error::protocol("malformed chunked body"))?;
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(Error::protocol("the body is shorter than its Content-Length"));
        }
        body.truncate(len);
    }
    Ok(Response {
        status,
        reason: reason.to_string(),
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn credentials_in_a_url_are_refused_and_never_shown() {
        for url in [
            "https://user:s3cret@est.example/.well-known/est",
            "https://s3cret@est.example:8443",
            "http://user:s3cret@scep.example/scep",
        ] {
            let scheme = if url.starts_with("https") { "https" } else { "http" };
            let e = split_url(url, scheme, 443, "EST").unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{url}");
            assert!(e.message.contains("credentials in a URL are not accepted"), "{e}");
            assert!(!e.message.contains("s3cret"), "{e}");
        }
        let e = split_url("ftp://u:s3cret@h/x", "https", 443, "EST").unwrap_err();
        assert!(!e.message.contains("s3cret"), "{e}");
        assert_eq!(redacted("https://u:p@h:1/x@y"), "https://***@h:1/x@y");
        assert_eq!(redacted("https://h/x@y"), "https://h/x@y");
    }

    #[test]
    fn responses_parse_with_length_or_chunks_and_garbage_is_refused() {
        let r = parse_response(b"HTTP/1.1 202 Accepted\r\nRetry-After: 5\r\nContent-Length: 2\r\n\r\nokXX").unwrap();
        assert_eq!(
            (r.status, r.header("retry-after"), r.body.as_slice()),
            (202, Some("5"), &b"ok"[..])
        );
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0 x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").is_err());
        assert!(dechunk(b"zz\r\n").is_none());
    }
}
