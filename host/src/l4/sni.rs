//! Reads the server name (SNI) from a TLS ClientHello without terminating TLS, for passthrough
//! routing (as HAProxy's `req.ssl_sni`). The parser works on the bytes read so far: it says
//! "incomplete" until the whole ClientHello is there (records may be split across reads, and the
//! message across records), and refuses anything that is not a well-formed ClientHello or is larger
//! than [`MAX_CLIENT_HELLO`].

/// The largest ClientHello accepted, in bytes of handshake message (post-quantum key shares make
/// them a few KiB; 16 KiB leaves room).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The most bytes worth reading to find a ClientHello: the message plus record headers, allowing
/// fragmentation into records of at least 1 KiB... and a little more for small ones.
pub const MAX_READ: usize = 2 * MAX_CLIENT_HELLO;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
const MAX_RECORD: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet: read more.
    Incomplete,
    /// A complete ClientHello, with its server name (lower case, no trailing dot) if it sent one.
    Complete(Option<String>),
}

/// Why the bytes are refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The connection does not start with a TLS handshake record.
    #[error("not TLS: the first record is not a handshake")]
    NotTls,
    /// The first handshake message is not a ClientHello.
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello (or the bytes needed to read it) is larger than allowed.
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// The ClientHello is malformed.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the start of a TLS connection. See the module docs.
pub fn parse(buf: &[u8]) -> Result<Hello, SniError> {
    // Reassemble the handshake bytes from the records present.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.is_empty() {
            break;
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return Err(if pos == 0 {
                SniError::NotTls
            } else {
                SniError::Malformed("another record type before the ClientHello ended")
            });
        }
        if rest.len() >= 2 && rest[1] != 3 {
            return Err(SniError::NotTls);
        }
        if rest.len() < 5 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(SniError::Malformed("bad record length"));
        }
        let available = len.min(rest.len() - 5);
        handshake.extend_from_slice(&rest[5..5 + available]);
        if available < len {
            break;
        }
        pos += 5 + len;
        if handshake.len() >= 4 {
            // A whole message may be there already: later records are not ours to read.
            let msg_len = message_len(&handshake)?;
            if handshake.len() >= 4 + msg_len {
                break;
            }
        }
    }
    if handshake.len() < 4 {
        return Ok(Hello::Incomplete);
    }
    let msg_len = message_len(&handshake)?;
    if handshake.len() < 4 + msg_len {
        return Ok(Hello::Incomplete);
    }
    client_hello(&handshake[4..4 + msg_len]).map(Hello::Complete)
}

/// The length of the handshake message starting `handshake`, checked to be a ClientHello.
fn message_len(handshake: &[u8]) -> Result<usize, SniError> {
    if handshake[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(SniError::NotClientHello);
    }
    let len = usize::from(handshake[1]) << 16
        | usize::from(handshake[2]) << 8
        | usize::from(handshake[3]);
    if len > MAX_CLIENT_HELLO {
        return Err(SniError::TooLarge);
    }
    Ok(len)
}

/// A cursor over a ClientHello body that fails on any overrun.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

/// The server name of a ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader(body);
    let version = r.u16("truncated version")?;
    if version >> 8 != 3 {
        return Err(SniError::Malformed("bad legacy version"));
    }
    r.take(32, "truncated random")?;
    if r.vec8("truncated session id")?.len() > 32 {
        return Err(SniError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("bad cipher suite list"));
    }
    if r.vec8("truncated compression methods")?.is_empty() {
        return Err(SniError::Malformed("no compression method"));
    }
    if r.0.is_empty() {
        // A ClientHello without extensions (old clients): no name.
        return Ok(None);
    }
    let mut exts = Reader(r.vec16("truncated extensions")?);
    if !r.0.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    let mut name = None;
    while !exts.0.is_empty() {
        let kind = exts.u16("truncated extension")?;
        let data = exts.vec16("truncated extension")?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if name.is_some() {
            return Err(SniError::Malformed("two server_name extensions"));
        }
        let mut list = Reader(Reader(data).vec16("truncated server name list")?);
        while !list.0.is_empty() {
            let kind = list.u8("truncated server name")?;
            let value = list.vec16("truncated server name")?;
            if kind == NAME_TYPE_HOST && name.is_none() {
                name = Some(host_name(value)?);
            }
        }
        if name.is_none() {
            return Err(SniError::Malformed(
                "server_name extension without a host name",
            ));
        }
    }
    Ok(name)
}

fn host_name(raw: &[u8]) -> Result<String, SniError> {
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(SniError::Malformed("bad host name"));
    }
    let text = std::str::from_utf8(raw).map_err(|_| SniError::Malformed("bad host name"))?;
    Ok(text.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real ClientHello made by rustls for `name`, as the records it would send.
    pub(crate) fn rustls_client_hello(name: Option<&str>) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = name.is_some();
        let server = ServerName::try_from(name.unwrap_or("no-sni.invalid").to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Re-frames the handshake payload of `records` into records of at most `size` bytes.
    fn refragment(records: &[u8], size: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let len = usize::from(u16::from_be_bytes([records[pos + 3], records[pos + 4]]));
            payload.extend_from_slice(&records[pos + 5..pos + 5 + len]);
            pos += 5 + len;
        }
        let mut out = Vec::new();
        for chunk in payload.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Every prefix is incomplete, the whole is complete.
    fn assert_prefixes_incomplete(bytes: &[u8], expect: Option<&str>) {
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(Hello::Incomplete), "cut at {cut}");
        }
        assert_eq!(
            parse(bytes),
            Ok(Hello::Complete(expect.map(str::to_string)))
        );
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello_at_every_split() {
        let hello = rustls_client_hello(Some("Api.Example.com"));
        assert_prefixes_incomplete(&hello, Some("api.example.com"));
    }

    #[test]
    fn reads_the_name_across_fragmented_records() {
        let hello = rustls_client_hello(Some("a.example.com"));
        for size in [1, 7, 100] {
            let frag = refragment(&hello, size);
            assert!(frag.len() > hello.len());
            assert_prefixes_incomplete(&frag, Some("a.example.com"));
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_read() {
        let mut bytes = rustls_client_hello(Some("a.example.com"));
        bytes.extend_from_slice(&[23, 3, 3, 0, 2, 1, 2]);
        assert_eq!(
            parse(&bytes),
            Ok(Hello::Complete(Some("a.example.com".into())))
        );
    }

    #[test]
    fn a_hello_without_sni_has_no_name() {
        let hello = rustls_client_hello(None);
        assert_eq!(parse(&hello), Ok(Hello::Complete(None)));
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        assert_eq!(parse(&[22, 9]), Err(SniError::NotTls));
        assert_eq!(
            parse(&[22, 3, 1, 0, 0]),
            Err(SniError::Malformed("bad record length"))
        );
        // A ServerHello (type 2) where a ClientHello should be.
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(SniError::NotClientHello)
        );
        // An alert record in the middle of a fragmented ClientHello.
        let hello = refragment(&rustls_client_hello(Some("a.b")), 50);
        let mut bad = hello[..55].to_vec();
        bad.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(parse(&bad), Err(SniError::Malformed(_))));
    }

    #[test]
    fn oversize_hellos_are_refused_from_their_header() {
        let len = MAX_CLIENT_HELLO + 1;
        let header = [
            22,
            3,
            1,
            0,
            4,
            1,
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
        ];
        assert_eq!(parse(&header), Err(SniError::TooLarge));
    }

    #[test]
    fn truncated_fields_are_malformed() {
        let hello = rustls_client_hello(Some("a.example.com"));
        // Shrink the declared handshake length so the body ends early, fields cut.
        for cut in [10, 40, 80, 120] {
            let body = &hello[9..9 + cut];
            let mut bytes = vec![22, 3, 1];
            bytes.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            bytes.extend_from_slice(&[1, 0, 0, body.len() as u8]);
            bytes.extend_from_slice(body);
            assert!(
                matches!(parse(&bytes), Err(SniError::Malformed(_))),
                "cut at {cut}: {:?}",
                parse(&bytes)
            );
        }
    }

    #[test]
    fn bad_host_names_are_refused() {
        assert_eq!(host_name(b"ok.example.com."), Ok("ok.example.com".into()));
        assert!(host_name(b"").is_err());
        assert!(host_name(b"a b").is_err());
        assert!(host_name(&[0xff, 0x41]).is_err());
    }
}
