//! HTTP/1 request framing for the refusal checks.
//!
//! hyper quietly normalizes the framing headers it serves from (it drops a second equal
//! `Content-Length`, and a `Content-Length` beside `Transfer-Encoding`), so the checks
//! that refuse such requests must read the raw bytes. They used to do so with a sniffer
//! of their own that found message boundaries differently from hyper, which let a
//! request slip past them (issue 17). Now:
//!
//! - Heads are parsed with httparse, configured as hyper configures it, over the same
//!   bytes hyper reads, so both find the same end of every head whatever the
//!   segmentation (httparse answers `Partial` until a head is complete).
//! - Bodies are followed with hyper's own grammar (digits-only `Content-Length`; its
//!   chunked state machine, byte for byte).
//! - [`Gate`] sits between the socket and hyper and hands hyper only bytes the
//!   [`Framer`] has framed: hyper can never be ahead of the checks. After a refused head
//!   nothing more is handed over; where the framer cannot follow a body, the connection
//!   fails instead of letting hyper guess.
//! - Each request hyper serves takes the next framed head ([`Framing::admit`]); one
//!   missing or for another method is refused as `unframed-request`, so a disagreement
//!   fails closed.
//! - After a request that may switch protocols (an `Upgrade` header or `CONNECT`), the
//!   gate holds back further bytes until the answer is known: only a relayed `101` (or a
//!   2xx to `CONNECT`) turns framing off; any other answer keeps the checks on.
//! - Two answers hyper cannot give are given here, from the request line as it arrives:
//!   httparse knows only HTTP/1.0 and 1.1, so the version digits hyper is handed are
//!   rewritten (a higher HTTP/1 minor version is served as 1.1, RFC 9112 section 2.3;
//!   another major version is refused 505), and a request target longer than
//!   [`MAX_TARGET`] is refused 414 (hyper would answer 431 to the whole head) by
//!   handing hyper the target up to the limit and an end of head of our own.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ProxyError;

/// A request line's target longer than this is refused (414), as ingress-nginx does by
/// default: its `large_client_header_buffers` (8k) must hold the request line. Less
/// where the head limit leaves no room for it (`listener::max_target`).
pub(crate) const MAX_TARGET: usize = 8192;

/// Ends the request line and head of a request whose target was cut at the limit, so
/// that hyper serves it and the service answers 414.
const CUT_TARGET_END: &[u8] = b" HTTP/1.1\r\n\r\n";

/// The HTTP/2 connection preface; hyper-util serves HTTP/2 when a connection opens with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers parsed on the stack; more (up to the configured maximum) go on the heap.
const INLINE_HEADERS: usize = 128;

/// One request head as the framer parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramedHead {
    /// The request method.
    pub method: Method,
    /// How many header lines the head has.
    pub headers: usize,
    /// Why the checks refuse it, if they do.
    pub refusal: Option<ProxyError>,
    /// Whether the request may switch protocols (hyper's rule: `CONNECT`, or an
    /// `Upgrade` header on HTTP/1.1).
    pub upgrade: bool,
    /// Where the head begins in the bytes handed to hyper (any empty lines before the
    /// request line included).
    pub start: u64,
}

/// What the framer and the service share on one connection.
#[derive(Default)]
struct Exchange {
    heads: VecDeque<FramedHead>,
    /// The answer to the last request that may switch protocols: `Some(true)` when it
    /// switched.
    switched: Option<bool>,
    waker: Option<Waker>,
    /// When the first bytes of a head that is not complete yet arrived.
    head_since: Option<tokio::time::Instant>,
}

/// The service's side of a connection's framing.
#[derive(Clone, Default)]
pub(crate) struct Framing {
    exchange: Arc<parking_lot::Mutex<Exchange>>,
}

/// A request the checks let through; for one that may switch protocols, tell the
/// framer what the answer was with [`Admitted::answered`] (dropping it says "no switch").
#[derive(Default)]
pub(crate) struct Admitted {
    watch: Option<Framing>,
    method_connect: bool,
}

impl Admitted {
    /// Records the status relayed to the client.
    pub(crate) fn answered(mut self, status: StatusCode) {
        if let Some(f) = self.watch.take() {
            let switched = status == StatusCode::SWITCHING_PROTOCOLS
                || (self.method_connect && status.is_success());
            f.decide(switched);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(f) = self.watch.take() {
            f.decide(false);
        }
    }
}

impl Framing {
    /// When the head being read began to arrive, while it is incomplete: the listener's
    /// header timeout runs from there, not from the end of the previous exchange (an
    /// idle keep-alive connection is the idle timeout's business).
    pub(crate) fn partial_head_since(&self) -> Option<tokio::time::Instant> {
        self.exchange.lock().head_since
    }

    /// Takes the framed head of the next request hyper serves and applies the checks.
    pub(crate) fn admit(&self, method: &Method, version: Version) -> Result<Admitted, ProxyError> {
        // HTTP/2 frames its own messages; this framer only ever sees HTTP/1 heads.
        if version > Version::HTTP_11 {
            return Ok(Admitted::default());
        }
        let head = self.exchange.lock().heads.pop_front();
        let Some(head) = head else {
            return Err(ProxyError::UnframedRequest);
        };
        let watch = head.upgrade.then(|| self.clone());
        let admitted = Admitted {
            watch,
            method_connect: head.method == Method::CONNECT,
        };
        if head.method != *method {
            return Err(ProxyError::UnframedRequest);
        }
        match head.refusal {
            // Dropping `admitted` answers "no switch".
            Some(reason) => Err(reason),
            None => Ok(admitted),
        }
    }

    /// Records whether the last request that may switch protocols switched.
    pub(crate) fn decide(&self, switched: bool) {
        let mut x = self.exchange.lock();
        x.switched = Some(switched);
        if let Some(w) = x.waker.take() {
            w.wake();
        }
    }
}

/// Where the framer is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The start of a connection, which may be the HTTP/2 preface.
    Preface,
    /// Reading a request head.
    Head,
    /// A `Content-Length` body with this many bytes left.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// A request that may switch protocols is complete; waiting for its answer.
    AwaitSwitch,
    /// A head was refused or could not be parsed: nothing more is framed.
    Stopped,
    /// A body could not be followed: the connection fails.
    Broken,
    /// HTTP/2, or a switched protocol: bytes pass unread.
    Off,
}

/// hyper's chunked-body states (`proto/h1/decode.rs`), with the same transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// Frames HTTP/1 requests as they arrive and queues each head for the service.
pub(crate) struct Framer {
    state: State,
    /// The bytes of a head not yet complete.
    head: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    max_target: usize,
    /// The head being read names an HTTP major version other than 1 (its digits were
    /// rewritten to 1.1 for hyper).
    other_major: bool,
    /// Bytes of our own for hyper after the last framed ones (see [`CUT_TARGET_END`]).
    tail: &'static [u8],
    /// The current message may switch protocols.
    switch: bool,
    /// Bytes handed to hyper so far, and where in them the head being read begins.
    fed: u64,
    head_start: u64,
    /// ALPN chose HTTP/1.1: the HTTP/2 preface is not a way into HTTP/2.
    h1_only: bool,
    /// ALPN chose HTTP/2: anything but the preface is not a way into HTTP/1.
    h2_only: bool,
    framing: Framing,
}

impl Framer {
    /// A framer for a new connection; `max_head` and `max_headers` are hyper's
    /// `max_buf_size` and `max_headers`, `max_target` the longest request target served.
    /// With `h2_preface`, a connection that opens with the HTTP/2 preface is served as
    /// HTTP/2 (hyper-util's auto server does the same); without (ALPN chose `http/1.1`),
    /// everything is framed as HTTP/1.
    pub(crate) fn new(
        max_head: usize,
        max_headers: usize,
        max_target: usize,
        h2_preface: bool,
    ) -> Self {
        Framer {
            state: if h2_preface {
                State::Preface
            } else {
                State::Head
            },
            h1_only: !h2_preface,
            h2_only: false,
            head: Vec::new(),
            max_head,
            max_headers: max_headers.max(1),
            max_target,
            other_major: false,
            tail: &[],
            switch: false,
            fed: 0,
            head_start: 0,
            framing: Framing::default(),
        }
    }

    /// A framer for a connection that negotiated HTTP/2 with ALPN: it reads the preface
    /// and nothing after it, and a connection that opens with anything else fails
    /// (RFC 9113 section 3.4). hyper-util's `serve_connection_with_upgrades` sniffs for
    /// the preface whatever `http2_only` says, and would serve anything else as
    /// HTTP/1.1.
    pub(crate) fn h2_only() -> Self {
        Framer {
            state: State::Preface,
            h1_only: false,
            h2_only: true,
            head: Vec::new(),
            max_head: 0,
            max_headers: 1,
            max_target: 0,
            other_major: false,
            tail: &[],
            switch: false,
            fed: 0,
            head_start: 0,
            framing: Framing::default(),
        }
    }

    /// The service's side.
    pub(crate) fn framing(&self) -> Framing {
        self.framing.clone()
    }

    /// Frames `data`, the next bytes of the stream, and returns how many of them may be
    /// handed to hyper now. Fewer than all when the framer stopped, broke, or waits for
    /// the answer to a request that may switch protocols. The version digits of a
    /// request line are rewritten in `data` as hyper must read them.
    pub(crate) fn feed(&mut self, data: &mut [u8]) -> usize {
        let passed = self.frame(data);
        self.fed += passed as u64;
        passed
    }

    fn frame(&mut self, data: &mut [u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Off => return data.len(),
                State::Stopped | State::Broken | State::AwaitSwitch => return at,
                State::Preface => at += self.preface(&data[at..]),
                State::Head => {
                    if self.head.is_empty() {
                        self.head_start = self.fed + at as u64;
                    }
                    at += self.read_head(&mut data[at..]);
                }
                State::Length(left) => {
                    let take = left.min((data.len() - at) as u64);
                    at += take as usize;
                    if take == left {
                        self.end_message();
                    } else {
                        self.state = State::Length(left - take);
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min((data.len() - at) as u64);
                    at += take as usize;
                    self.state = State::Chunked(if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - take)
                    });
                }
                State::Chunked(chunk) => match step(chunk, data[at]) {
                    Some(Some(next)) => {
                        at += 1;
                        self.state = State::Chunked(next);
                    }
                    Some(None) => {
                        at += 1;
                        self.end_message();
                    }
                    None => {
                        self.state = State::Broken;
                        return at;
                    }
                },
            }
        }
        at
    }

    fn preface(&mut self, data: &[u8]) -> usize {
        let seen = self.head.len();
        let take = (H2_PREFACE.len() - seen).min(data.len());
        if H2_PREFACE[seen..].starts_with(&data[..take]) {
            self.head.extend_from_slice(&data[..take]);
            if self.head.len() == H2_PREFACE.len() {
                self.head = Vec::new();
                self.state = State::Off;
            }
            return take;
        }
        if self.h2_only {
            self.head = Vec::new();
            self.state = State::Broken;
            return 0;
        }
        // HTTP/1: the bytes kept so far start the first head.
        self.state = State::Head;
        0
    }

    fn read_head(&mut self, data: &mut [u8]) -> usize {
        let before = self.head.len();
        // A head that arrives whole is parsed where it lies; only a partial one is kept.
        if before > 0 {
            self.head.extend_from_slice(data);
        }
        let line = request_line(if before == 0 { data } else { &self.head });
        if let Some(line) = &line
            && line.target.len() > self.max_target
            && let Some((cut, method)) =
                self.cut_target(line, if before == 0 { data } else { &self.head })
        {
            // hyper gets the target up to the limit, then an end of head of ours.
            self.framing.exchange.lock().heads.push_back(FramedHead {
                method,
                headers: 0,
                refusal: Some(ProxyError::UriTooLong),
                upgrade: false,
                start: self.head_start,
            });
            self.tail = CUT_TARGET_END;
            self.stop();
            return cut - before;
        }
        if let Some(line) = &line {
            let all: &mut [u8] = if before == 0 { data } else { &mut self.head };
            self.other_major = fix_version(all, line, before, self.other_major);
            if before > 0 {
                // hyper is handed `data`: with the digits as rewritten.
                data.copy_from_slice(&self.head[before..]);
            }
        }
        let parsed = if before == 0 {
            parse_head(data, self.max_headers, self.max_target)
        } else {
            parse_head(&self.head, self.max_headers, self.max_target)
        };
        let (end, judged) = match parsed {
            Parsed::Complete(end, judged) => (end, judged),
            Parsed::Partial => {
                if before == 0 {
                    self.head.extend_from_slice(data);
                    self.framing.exchange.lock().head_since = Some(tokio::time::Instant::now());
                }
                if self.head.len() >= self.max_head {
                    // hyper answers 431 to the same bytes.
                    self.stop();
                }
                return data.len();
            }
            Parsed::Invalid => {
                let bytes = if before == 0 { &*data } else { &self.head[..] };
                if self.h1_only && bytes.starts_with(b"PRI * HTTP/2") {
                    // hyper-util would take the preface for HTTP/2 whatever ALPN said;
                    // it gets none of it and the connection fails instead.
                    self.head = Vec::new();
                    self.state = State::Broken;
                    return 0;
                }
                // hyper answers 400 to the same bytes; nothing after them is framed.
                self.stop();
                return data.len();
            }
        };
        if before > 0 {
            // An idle connection keeps no head buffer.
            self.head = Vec::new();
            self.framing.exchange.lock().head_since = None;
        }
        let consumed = end.saturating_sub(before);
        let Some((mut head, body)) = judged else {
            self.stop();
            return consumed;
        };
        if std::mem::take(&mut self.other_major) {
            head.refusal = Some(ProxyError::HttpVersionNotSupported);
        }
        self.switch = head.upgrade;
        head.start = self.head_start;
        let refused = head.refusal.is_some();
        self.framing.exchange.lock().heads.push_back(head);
        if refused {
            self.stop();
        } else {
            match body {
                Body::None => self.end_message(),
                Body::Length(n) => self.state = State::Length(n),
                Body::Chunked => self.state = State::Chunked(Chunk::Start),
            }
        }
        consumed
    }

    /// For a request target over the limit: where the head is cut for hyper (after the
    /// target's first `max_target` bytes), and its method. `None` where httparse refuses
    /// the bytes before the cut (hyper answers 400), or where hyper's buffer has no room
    /// for the cut head (then hyper answers 431 before the head ends, or the service 414
    /// after: [`judge`] refuses it too). Decided on the bytes up to the cut alone, so
    /// whatever follows them in the same read does not change the verdict.
    fn cut_target(&self, line: &RequestLine, head: &[u8]) -> Option<(usize, Method)> {
        let cut = line.target.start + self.max_target;
        // Never inside a UTF-8 sequence: hyper refuses a target that ends in half a
        // character (400), so the service would not see the 414. Such a head is not cut
        // at all: hyper gets it whole, and the service refuses it 414 (or hyper answers
        // 431 to an oversized head). The byte at the cut is there (the target is longer
        // than the limit), so the split cannot change this.
        if head[cut] & 0xC0 == 0x80 {
            return None;
        }
        // Nor where the target's first `max_target` bytes are not a URI hyper takes
        // although the whole target may be (`@@…@host:port` cut before its host): the
        // cut head would get hyper's 400 instead of the service's 414.
        if http::Uri::try_from(&head[line.target.start..cut]).is_err() {
            return None;
        }
        if cut + CUT_TARGET_END.len() >= self.max_head
            || matches!(
                parse_head(&head[..cut], self.max_headers, self.max_target),
                Parsed::Invalid
            )
        {
            return None;
        }
        let method = Method::from_bytes(&head[line.method.clone()]).ok()?;
        Some((cut, method))
    }

    /// Takes the bytes of our own that hyper is to read after the framed ones.
    pub(crate) fn take_tail(&mut self) -> &'static [u8] {
        std::mem::take(&mut self.tail)
    }

    fn stop(&mut self) {
        self.head = Vec::new();
        self.other_major = false;
        self.framing.exchange.lock().head_since = None;
        self.state = State::Stopped;
    }

    fn end_message(&mut self) {
        self.state = if std::mem::take(&mut self.switch) {
            State::AwaitSwitch
        } else {
            State::Head
        };
    }

    /// Resolves a wait for the answer to a request that may switch protocols.
    pub(crate) fn poll_switch(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state != State::AwaitSwitch {
            return Poll::Ready(());
        }
        let mut x = self.framing.exchange.lock();
        match x.switched.take() {
            Some(true) => self.state = State::Off,
            Some(false) => self.state = State::Head,
            None => {
                x.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }

    /// Takes the heads framed so far that the service has not taken (for the framer
    /// on its own, with no service).
    pub(crate) fn take_heads(&self) -> Vec<FramedHead> {
        self.framing.exchange.lock().heads.drain(..).collect()
    }

    /// Waits for the answer to a request that may switch protocols.
    pub(crate) fn is_awaiting_switch(&self) -> bool {
        self.state == State::AwaitSwitch
    }

    /// The connection opened with the HTTP/2 preface, or with a start of it.
    pub(crate) fn may_be_h2(&self) -> bool {
        matches!(self.state, State::Preface | State::Off)
    }

    /// Reads nothing more: HTTP/2, or a switched protocol.
    pub(crate) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Frames nothing more: a refused or unparsable head, or a body it cannot follow.
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped | State::Broken)
    }

    /// Whether a new HTTP/1 server may take the connection over once its server has
    /// consumed the first `consumed` bytes handed to it: only where a request head
    /// begins (the next one framed, or the one being read, or the end of everything
    /// framed), never inside a body hyper left unread, and never once framing stopped,
    /// switched or waits for a switch.
    pub(crate) fn resumable_at(&mut self, consumed: u64) -> bool {
        if self.state == State::AwaitSwitch {
            // The answer is known by now (the server wrote it): take it as the next
            // read would.
            match self.framing.exchange.lock().switched.take() {
                Some(false) => self.state = State::Head,
                Some(true) => self.state = State::Off,
                None => {}
            }
        }
        if !matches!(
            self.state,
            State::Head | State::Length(_) | State::Chunked(_)
        ) {
            return false;
        }
        if let Some(next) = self.framing.exchange.lock().heads.front() {
            return next.start == consumed;
        }
        match self.state {
            State::Head if !self.head.is_empty() => self.head_start == consumed,
            State::Head => self.fed == consumed,
            // The body of a request already taken, not all consumed.
            _ => false,
        }
    }
}

enum Body {
    None,
    Length(u64),
    Chunked,
}

enum Parsed {
    /// The head ends at this offset; `None` for a head hyper refuses itself.
    Complete(usize, Option<(FramedHead, Body)>),
    Partial,
    Invalid,
}

/// Parses a head as hyper's server does: httparse with its default configuration and
/// room for `max_headers` headers.
fn parse_head(buf: &[u8], max_headers: usize, max_target: usize) -> Parsed {
    let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    let mut heap = Vec::new();
    let headers = if max_headers <= INLINE_HEADERS {
        &mut inline[..max_headers]
    } else {
        heap.resize(max_headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(headers);
    match httparse::ParserConfig::default().parse_request(&mut req, buf) {
        Ok(httparse::Status::Complete(end)) => Parsed::Complete(end, judge(&req, max_target)),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// The checks, on what httparse parsed, and the body that follows. `None` for a head
/// hyper refuses itself (a method it cannot represent).
fn judge(req: &httparse::Request<'_, '_>, max_target: usize) -> Option<(FramedHead, Body)> {
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let http11 = req.version? == 1;
    let mut lengths = 0usize;
    let mut length = None;
    let mut te = false;
    let mut chunked = false;
    let mut upgrade = method == Method::CONNECT;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = content_length(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // hyper: the last Transfer-Encoding line decides.
            te = true;
            chunked = ends_in_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    let refusal = if req.path?.len() > max_target {
        Some(ProxyError::UriTooLong)
    } else if lengths > 1 {
        Some(ProxyError::DuplicateContentLength)
    } else if lengths > 0 && te {
        Some(ProxyError::ContentLengthAndTransferEncoding)
    } else if te && (!http11 || !chunked) {
        Some(ProxyError::BadTransferEncoding)
    } else if lengths == 1 && length.is_none() {
        Some(ProxyError::BadContentLength)
    } else {
        None
    };
    let body = if te {
        Body::Chunked
    } else {
        match length {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        }
    };
    let head = FramedHead {
        method,
        headers: req.headers.len(),
        refusal,
        upgrade,
        start: 0,
    };
    Some((head, body))
}

/// Where the parts of a request line lie, as httparse finds them (after any empty
/// lines; one space after the method and after the target).
struct RequestLine {
    method: std::ops::Range<usize>,
    /// The target so far: to its end, or to the end of the bytes while it has none.
    target: std::ops::Range<usize>,
    /// Where the version begins, once the target has ended.
    version: Option<usize>,
}

/// The request line at the start of `buf`, as far as it has arrived; `None` before its
/// target begins, or where the method does not end in a space.
fn request_line(buf: &[u8]) -> Option<RequestLine> {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => break,
        }
    }
    let delimiter = |b: &u8| matches!(b, b' ' | b'\r' | b'\n');
    let sp = at + buf[at..].iter().position(delimiter)?;
    if buf[sp] != b' ' {
        return None;
    }
    let start = sp + 1;
    let (end, version) = match buf[start..].iter().position(delimiter) {
        Some(n) if buf[start + n] == b' ' => (start + n, Some(start + n + 1)),
        // A target that ends the line has no version (httparse refuses it), but its
        // length is judged all the same: a split that hands over the target before its
        // end must get the verdict the whole line gets.
        Some(n) => (start + n, None),
        None => (buf.len(), None),
    };
    Some(RequestLine {
        method: at..sp,
        target: start..end,
        version,
    })
}

/// Rewrites the version digits of the request line in `buf` at `from` or later (those
/// before were seen by an earlier call) as hyper must read them: `HTTP/1.x` with x > 1
/// becomes `HTTP/1.1` (RFC 9112 section 2.3: served as the highest minor version
/// supported), and `HTTP/y.x` with y other than 1 becomes `HTTP/1.1` too: the head is
/// then refused 505. Anything else is left for httparse to refuse. The HTTP/2 preface
/// (`PRI * HTTP/2.0`) is not a request line to rewrite. Takes and returns whether the
/// major version was another one.
fn fix_version(buf: &mut [u8], line: &RequestLine, from: usize, mut other_major: bool) -> bool {
    let Some(v) = line.version else {
        return other_major;
    };
    if &buf[line.method.clone()] == b"PRI" && &buf[line.target.clone()] == b"*" {
        return other_major;
    }
    let seen = &buf[v..buf.len().min(v + 5)];
    if !b"HTTP/".starts_with(seen) {
        return other_major;
    }
    let (major, minor) = (v + 5, v + 7);
    // Only a request line httparse takes up to the version: the rewrite must not
    // depend on whether bytes it refuses arrived before the version or with it.
    if buf.len() <= major || !line_prefix_parses(&buf[..major]) {
        return other_major;
    }
    if let Some(d) = buf.get_mut(major)
        && major >= from
        && d.is_ascii_digit()
        && *d != b'1'
    {
        *d = b'1';
        other_major = true;
    }
    // After a rewritten major version, its minor is rewritten whatever it is; only
    // behind a major digit and the dot, since a head with anything else there is
    // refused as it arrives (and its later bytes are not rewritten, whatever the split).
    if buf.get(major).is_some_and(u8::is_ascii_digit)
        && buf.get(v + 6) == Some(&b'.')
        && let Some(d) = buf.get_mut(minor)
        && minor >= from
        && d.is_ascii_digit()
        && (*d > b'1' || other_major)
    {
        *d = b'1';
    }
    other_major
}

/// Whether httparse takes `prefix`, the start of a request line, as far as it goes.
fn line_prefix_parses(prefix: &[u8]) -> bool {
    let mut req = httparse::Request::new(&mut []);
    httparse::ParserConfig::default()
        .parse_request(&mut req, prefix)
        .is_ok()
}

/// hyper's rule: ASCII digits only, no sign, no list, below its largest length.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= u64::MAX - 2).then_some(n)
}

/// hyper's rule: the value is visible ASCII and its last coding is `chunked`.
fn ends_in_chunked(v: &[u8]) -> bool {
    let visible = v.iter().all(|&b| (32..127).contains(&b) || b == b'\t');
    visible
        && v.rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// One byte of a chunked body: the next state, `Some(None)` at the end of the body, or
/// `None` where hyper fails the body.
fn step(chunk: Chunk, b: u8) -> Option<Option<Chunk>> {
    use Chunk::*;
    let next = match (chunk, b) {
        (Start, b) => Size(hex(b)?),
        (Size(n), b) if hex(b).is_some() => Size(n.checked_mul(16)?.checked_add(hex(b)?)?),
        (Size(n) | SizeLws(n), b'\t' | b' ') => SizeLws(n),
        (Size(n) | SizeLws(n), b';') => Extension(n),
        (Size(n) | SizeLws(n) | Extension(n), b'\r') => SizeLf(n),
        (Extension(_), b'\n') => return None,
        (Extension(n), _) => Extension(n),
        (SizeLf(0), b'\n') => EndCr,
        (SizeLf(n), b'\n') => Data(n),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Start,
        (EndCr, b'\r') => EndLf,
        (Trailer, b'\r') => TrailerLf,
        (EndCr | Trailer, _) => Trailer,
        (TrailerLf, b'\n') => EndCr,
        (EndLf, b'\n') => return Some(None),
        _ => return None,
    };
    Some(Some(next))
}

/// An HTTP/1 connection as hyper reads it: only framed bytes get through.
pub(crate) struct Gate<T> {
    inner: T,
    framer: Framer,
    /// Bytes read from `inner` but held back from hyper, from `held_at` on.
    held: Vec<u8>,
    held_at: usize,
    /// Bytes of the framer's own still to hand hyper.
    tail: &'static [u8],
}

impl<T> Gate<T> {
    pub(crate) fn framer(&self) -> &Framer {
        &self.framer
    }

    pub(crate) fn framer_mut(&mut self) -> &mut Framer {
        &mut self.framer
    }

    pub(crate) fn new(inner: T, framer: Framer) -> Self {
        Gate {
            inner,
            framer,
            held: Vec::new(),
            held_at: 0,
            tail: &[],
        }
    }

    /// Frames the bytes just put into `buf` after `before`, keeps back what may not
    /// pass yet, and says whether anything passed.
    fn pass(&mut self, buf: &mut ReadBuf<'_>, before: usize, from_held: bool) -> bool {
        let new = &mut buf.filled_mut()[before..];
        let len = new.len();
        let passed = self.framer.feed(new);
        if from_held {
            self.held_at += passed;
        } else if passed < len && self.framer.state == State::AwaitSwitch {
            self.held.extend_from_slice(&new[passed..]);
        }
        if matches!(self.framer.state, State::Stopped | State::Broken)
            || self.held_at >= self.held.len()
        {
            self.held.clear();
            self.held_at = 0;
        }
        buf.set_filled(before + passed);
        let tail = self.framer.take_tail();
        if !tail.is_empty() {
            self.tail = tail;
        }
        // The end of a cut head goes with its last bytes where it fits.
        self.put_tail(buf) || passed > 0
    }

    /// Hands hyper what fits of the framer's own bytes; says whether any did.
    fn put_tail(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = buf.remaining().min(self.tail.len());
        buf.put_slice(&self.tail[..n]);
        self.tail = &self.tail[n..];
        n > 0
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gate<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.framer.state == State::Off && this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if !this.tail.is_empty() {
                this.put_tail(buf);
                return Poll::Ready(Ok(()));
            }
            if this.framer.poll_switch(cx).is_pending() {
                return Poll::Pending;
            }
            match this.framer.state {
                // The refused request is answered (400, connection: close); hyper needs
                // nothing more from this connection.
                State::Stopped => return Poll::Pending,
                State::Broken => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request body framing that the checks cannot follow",
                    )));
                }
                _ => {}
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            if this.held_at < this.held.len() {
                let n = buf.remaining().min(this.held.len() - this.held_at);
                buf.put_slice(&this.held[this.held_at..this.held_at + n]);
                if this.pass(buf, before, true) {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() == before || this.pass(buf, before, false) {
                        return Poll::Ready(Ok(()));
                    }
                }
                other => return other,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gate<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{FramedHead, Framer, ProxyError};

    /// The verdicts of the framer alone, fed `input` in pieces of `step` bytes; a
    /// request that may switch protocols is answered "no switch".
    fn verdicts(input: &[u8], step: usize) -> Vec<Option<ProxyError>> {
        let mut f = Framer::new(8192, 100, 4096, true);
        let framing = f.framing();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut heads: Vec<FramedHead> = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            let mut rest = &mut piece[..];
            while !rest.is_empty() {
                let n = f.feed(rest);
                heads.extend(f.take_heads());
                rest = &mut rest[n..];
                if f.is_awaiting_switch() {
                    framing.decide(false);
                    let _ = f.poll_switch(&mut cx);
                } else if n == 0 {
                    break;
                }
            }
        }
        heads.into_iter().map(|h| h.refusal).collect()
    }

    #[test]
    fn follows_lengths_and_chunks_across_requests() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        for step in [1, 3, 7, stream.len()] {
            assert_eq!(
                verdicts(stream, step),
                vec![None, None, Some(ProxyError::DuplicateContentLength)],
                "step {step}"
            );
        }
        let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            verdicts(smuggle, 5),
            vec![Some(ProxyError::ContentLengthAndTransferEncoding)]
        );
    }

    #[test]
    fn bare_lf_heads_end_where_httparse_ends_them() {
        // Issue 17, finding 1: `\n\n` and `\n\r\n` end a head, however the bytes arrive.
        let dup = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        for first in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\r\n",
        ] {
            let mut stream = first.to_vec();
            stream.extend_from_slice(dup);
            for step in [1, 2, 5, stream.len()] {
                let got = verdicts(&stream, step);
                assert_eq!(
                    got.last(),
                    Some(&Some(ProxyError::DuplicateContentLength)),
                    "step {step}"
                );
            }
        }
        // `G\n\nG\r\n\r\n` (no valid head: hyper answers 400): the same whole and byte
        // by byte.
        assert_eq!(
            verdicts(b"G\n\nG\r\n\r\n", 1),
            verdicts(b"G\n\nG\r\n\r\n", 9)
        );
    }

    #[test]
    fn a_chunk_line_hyper_refuses_stops_the_framer() {
        let mut f = Framer::new(8192, 100, 4096, true);
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(f.feed(&mut head.to_vec()), head.len());
        // hyper wants CRLF after a chunk size; nothing after the bare LF is handed on.
        assert_eq!(f.feed(&mut b"5\nhello".to_vec()), 1);
        assert!(f.is_stopped());
    }

    /// What the framer hands hyper of `input` fed in pieces of `step` bytes, with its own
    /// bytes after a cut head, and the verdicts.
    fn handed(f: &mut Framer, input: &[u8], step: usize) -> (Vec<u8>, Vec<Option<ProxyError>>) {
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            let n = f.feed(&mut piece);
            out.extend_from_slice(&piece[..n]);
            out.extend_from_slice(f.take_tail());
        }
        let verdicts = f.take_heads().into_iter().map(|h| h.refusal).collect();
        (out, verdicts)
    }

    #[test]
    fn version_digits_are_rewritten_as_hyper_must_read_them() {
        let cases: [(&[u8], &[u8], Option<ProxyError>); 4] = [
            (b"GET / HTTP/1.2\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", None),
            (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n", None),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n",
                Some(ProxyError::HttpVersionNotSupported),
            ),
            (
                b"\r\nGET / HTTP/0.9\r\n\r\n",
                b"\r\nGET / HTTP/1.1\r\n\r\n",
                Some(ProxyError::HttpVersionNotSupported),
            ),
        ];
        for (input, out, verdict) in cases {
            for step in [1, 2, 7, input.len()] {
                let mut f = Framer::new(8192, 100, 4096, true);
                assert_eq!(handed(&mut f, input, step), (out.to_vec(), vec![verdict]));
            }
        }
        // The HTTP/2 preface where ALPN chose HTTP/1.1 is not a request to rewrite.
        let mut f = Framer::new(8192, 100, 4096, false);
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert_eq!(f.feed(&mut preface), 0);
        assert!(f.is_stopped());
    }

    #[test]
    fn a_target_over_the_limit_is_cut_for_hyper_where_its_buffer_has_room() {
        let head = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
        for step in [1, 5, head.len()] {
            let mut f = Framer::new(8192, 100, 100, true);
            let (out, verdicts) = handed(&mut f, head.as_bytes(), step);
            let cut = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(99));
            assert_eq!(String::from_utf8(out).unwrap(), cut, "step {step}");
            assert_eq!(verdicts, [Some(ProxyError::UriTooLong)]);
            assert!(f.is_stopped());
        }
        // No room in hyper's buffer for the cut head: the whole head is refused when it
        // ends (hyper answers 431 first to a longer one).
        let mut f = Framer::new(8192, 100, 8180, true);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(8185));
        let (out, verdicts) = handed(&mut f, long.as_bytes(), 1000);
        assert_eq!(out, long.as_bytes());
        assert_eq!(verdicts, [Some(ProxyError::UriTooLong)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The checks' verdicts on a stream delivered in one write and byte by byte.
        #[test]
        fn verdicts_do_not_depend_on_segmentation(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"GET / HTTP/1.1"[..]),
                Just(&b"POST / HTTP/1.1"[..]),
                Just(&b"G"[..]),
                Just(&b"\r\n"[..]),
                Just(&b"\n"[..]),
                Just(&b"\r"[..]),
                Just(&b"Host: a"[..]),
                Just(&b"Content-Length: 0"[..]),
                Just(&b"Content-Length: 3"[..]),
                Just(&b"Transfer-Encoding: chunked"[..]),
                Just(&b"Upgrade: x"[..]),
                Just(&b"0"[..]),
                Just(&b"3"[..]),
                Just(&b"xyz"[..]),
            ], 0..40),
            step in 2usize..17,
        ) {
            let stream: Vec<u8> = parts.concat();
            let whole = verdicts(&stream, stream.len().max(1));
            prop_assert_eq!(&verdicts(&stream, 1), &whole);
            prop_assert_eq!(&verdicts(&stream, step), &whole);
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use http::{Method, Version};

    use super::Framer;

    /// `stream` fed whole, in pieces of `step`, to a framer.
    fn fed(stream: &[u8], step: usize) -> Framer {
        let mut f = Framer::new(8192, 100, 4096, true);
        for piece in stream.chunks(step) {
            let mut piece = piece.to_vec();
            assert_eq!(f.feed(&mut piece), piece.len());
        }
        f
    }

    /// A new server may take a connection over only where a request head begins: the
    /// next head not yet taken, the one being read, or the end of what was framed; never
    /// inside a body, whatever the reads were.
    #[test]
    fn a_connection_resumes_only_where_a_head_begins() {
        let post = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let get = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let partial = b"\r\nGET /3 HTTP/1.1\r\nHo";
        let stream = [&post[..], get, partial].concat();
        let (p, g) = (post.len() as u64, get.len() as u64);
        for step in [1, 3, stream.len()] {
            let mut f = fed(&stream, step);
            let framing = f.framing();
            // Nothing taken yet: only the first head's start.
            assert!(f.resumable_at(0));
            assert!(!f.resumable_at(p));
            drop(framing.admit(&Method::POST, Version::HTTP_11).unwrap());
            assert!(f.resumable_at(p), "step {step}");
            assert!(!f.resumable_at(p - 2), "inside the body, step {step}");
            drop(framing.admit(&Method::GET, Version::HTTP_11).unwrap());
            // The partial head (empty lines first) begins right after the GET.
            assert!(f.resumable_at(p + g), "step {step}");
            assert!(!f.resumable_at(stream.len() as u64), "step {step}");
        }
        // A body not all read when its request was taken: nowhere.
        let mut f = fed(&post[..post.len() - 2], 7);
        drop(f.framing().admit(&Method::POST, Version::HTTP_11).unwrap());
        for at in 0..=post.len() as u64 {
            assert!(!f.resumable_at(at), "at {at}");
        }
        // Everything framed and taken, at a boundary: its end.
        let mut f = fed(get, 4);
        drop(f.framing().admit(&Method::GET, Version::HTTP_11).unwrap());
        assert!(f.resumable_at(g));
        assert!(!f.resumable_at(g - 1));
    }

    /// After a request that may switch protocols, the answer decides: no switch resumes
    /// where the next head begins, a switch never does.
    #[test]
    fn a_connection_resumes_after_an_upgrade_only_when_none_happened() {
        let up = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n";
        let len = up.len() as u64;
        for switched in [false, true] {
            let mut f = fed(up, up.len());
            let framing = f.framing();
            let admitted = framing.admit(&Method::GET, Version::HTTP_11).unwrap();
            admitted.answered(if switched {
                http::StatusCode::SWITCHING_PROTOCOLS
            } else {
                http::StatusCode::OK
            });
            assert_eq!(f.resumable_at(len), !switched, "switched: {switched}");
        }
    }
}
