//! NBD exports as disk sources: the client side of the NBD protocol
//! (github.com/NetworkBlockDevice/nbd, doc/proto.md) that a backup needs,
//! and the NBD URI forms (doc/uri.md): `nbd://HOST[:PORT]/EXPORT` and
//! `nbd+unix:///EXPORT?socket=PATH`.
//!
//! Why hand-written: the `nbd` crate (0.3) speaks only simple replies and has
//! no block status; libnbd's Rust bindings are not on crates.io and bring a
//! C library. What a backup needs is small: the fixed-newstyle handshake
//! with `NBD_OPT_GO`, structured replies, `NBD_OPT_SET_META_CONTEXT` for
//! `base:allocation` (so holes are never read) and `qemu:dirty-bitmap:NAME`
//! (changed-block tracking), then `NBD_CMD_READ` and `NBD_CMD_BLOCK_STATUS`
//! one at a time. It is tested against qemu-nbd, qemu-storage-daemon and
//! nbdkit (tests/integration/nbd.rs).
//!
//! One connection per source, one request in flight: the backup has a
//! single reader thread, which asks for runs of a few MiB, so a pipelined
//! client would add complexity for little (docs/benchmarks.md).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::DiskSource;
use crate::error::{Error, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERROR_BIT: u16 = 1 << 15;

/// `base:allocation`: reads as zeros.
const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME`: written since the bitmap was cleared.
const STATE_DIRTY: u32 = 1;

/// Largest read asked for at once: the protocol's usual limit, unless the
/// server says less.
const MAX_READ: u32 = 32 << 20;
/// Length asked for per block-status request; servers answer with as many
/// extents as they like from the start, and we ask again from where they end.
const STATUS_SPAN: u64 = 1 << 30;
/// A server that says nothing for this long is taken as gone.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Is `s` one of the NBD URI forms (rather than a path)?
pub fn is_url(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+") || s.starts_with("nbds://") || s.starts_with("nbds+")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    Tcp(String, u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub addr: Addr,
    pub export: String,
}

fn bad_url(url: &str, why: &str) -> Error {
    Error::InvalidInput(format!("NBD URL {url:?}: {why} (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)"))
}

fn percent_decode(s: &str, url: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| bad_url(url, "bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_url(url, "not UTF-8 after %-decoding"))
}

/// Parses the NBD URI standard's plain and unix forms; TLS (`nbds`) is
/// refused with a line that says so.
pub fn parse_url(url: &str) -> Result<Url> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad_url(url, "no scheme"))?;
    if scheme.starts_with("nbds") {
        return Err(bad_url(url, "TLS (nbds) is not supported; use a unix socket or a trusted network"));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(path, url)?;
    let mut socket = None;
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("socket", v)) => socket = Some(PathBuf::from(percent_decode(v, url)?)),
            Some((k, _)) if k.starts_with("tls") => return Err(bad_url(url, "TLS parameters are not supported")),
            _ => {} // other query parameters are hints a client may ignore
        }
    }
    let addr = match scheme {
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(bad_url(url, "a unix-socket URL has no host (nbd+unix:///EXPORT?socket=PATH)"));
            }
            Addr::Unix(socket.ok_or_else(|| bad_url(url, "no ?socket=PATH"))?)
        }
        "nbd" | "nbd+tcp" => {
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (h, p) = v6.split_once(']').ok_or_else(|| bad_url(url, "unclosed [ in host"))?;
                (h.to_owned(), p.strip_prefix(':'))
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), Some(p)),
                    None => (authority.to_owned(), None),
                }
            };
            if host.is_empty() {
                return Err(bad_url(url, "no host"));
            }
            let port = match port {
                Some(p) => p.parse().map_err(|_| bad_url(url, "bad port"))?,
                None => 10809,
            };
            Addr::Tcp(host, port)
        }
        _ => return Err(bad_url(url, &format!("unknown scheme {scheme:?}"))),
    };
    Ok(Url { addr, export })
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reply header (see [`Conn::reply`]).
enum Reply {
    Simple(u32),
    Chunk { done: bool, typ: u16, len: usize },
}

struct Conn {
    s: Stream,
    cookie: u64,
    /// Set once an exchange broke off halfway: the stream is out of step.
    broken: bool,
}

impl Conn {
    fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.s.read_exact(&mut v)?;
        Ok(v)
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)
    }

    /// One option reply: (type, data).
    fn option_reply(&mut self, opt: u32) -> io::Result<(u32, Vec<u8>)> {
        if self.u64()? != OPT_REPLY_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad option reply magic"));
        }
        let got = self.u32()?;
        let typ = self.u32()?;
        let len = self.u32()?;
        if got != opt || len > 64 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("option reply for {got} (asked {opt}), {len} bytes")));
        }
        Ok((typ, self.bytes(len as usize)?))
    }

    /// The header of the next reply to request `cookie`: a simple reply
    /// (its error, 0 for none; any data follows), or one structured chunk
    /// (its payload of `len` bytes follows).
    fn reply(&mut self, cookie: u64) -> io::Result<Reply> {
        let magic = self.u32()?;
        if magic == SIMPLE_REPLY_MAGIC {
            let err = self.u32()?;
            check_cookie(cookie, self.u64()?)?;
            return Ok(Reply::Simple(err));
        }
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad reply magic {magic:#x}")));
        }
        let flags = self.u16()?;
        let typ = self.u16()?;
        check_cookie(cookie, self.u64()?)?;
        let len = self.u32()? as usize;
        Ok(Reply::Chunk { done: flags & REPLY_FLAG_DONE != 0, typ, len })
    }

    fn request(&mut self, typ: u16, offset: u64, len: u32) -> io::Result<u64> {
        self.cookie += 1;
        let mut m = [0u8; 28];
        m[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m[6..8].copy_from_slice(&typ.to_be_bytes());
        m[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        m[16..24].copy_from_slice(&offset.to_be_bytes());
        m[24..28].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&m)?;
        Ok(self.cookie)
    }
}

/// The server's answer to a command that failed: errno and message.
fn server_error(errno: u32, msg: &str) -> io::Error {
    let e = io::Error::from_raw_os_error(errno as i32);
    if msg.is_empty() { e } else { io::Error::new(e.kind(), format!("{msg} ({e})")) }
}

fn eof_to_closed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
    } else {
        e
    }
}

pub struct NbdSource {
    conn: Mutex<Conn>,
    url: String,
    size: u64,
    max_read: u32,
    allocation: Option<u32>,
    /// (bitmap name, its meta context id if the server has it)
    bitmap: Option<(String, Option<u32>)>,
}

impl NbdSource {
    /// Connects to `url` and negotiates the export; with `bitmap`, asks for
    /// the `qemu:dirty-bitmap:NAME` context too (a server without it is not
    /// an error: [`DiskSource::dirty_ranges`] then says so).
    pub fn open(url: &str, bitmap: Option<&str>) -> Result<NbdSource> {
        let u = parse_url(url)?;
        let ctx = |what: &str| format!("NBD {url}: {what}");
        let s = match &u.addr {
            Addr::Unix(p) => {
                let s = UnixStream::connect(p).map_err(|e| Error::io(ctx(&format!("cannot connect to {}", p.display())), e))?;
                s.set_read_timeout(Some(TIMEOUT)).ok();
                Stream::Unix(s)
            }
            Addr::Tcp(h, port) => {
                let s = TcpStream::connect((h.as_str(), *port)).map_err(|e| Error::io(ctx(&format!("cannot connect to {h}:{port}")), e))?;
                s.set_nodelay(true).ok();
                s.set_read_timeout(Some(TIMEOUT)).ok();
                Stream::Tcp(s)
            }
        };
        let mut c = Conn { s, cookie: 0, broken: false };
        let n = handshake(&mut c, url, &u.export, bitmap).map_err(|e| match e {
            Error::Io { context, source } if source.kind() == io::ErrorKind::UnexpectedEof => {
                Error::Io { context, source: io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection during the handshake") }
            }
            e => e,
        })?;
        Ok(NbdSource {
            conn: Mutex::new(c),
            url: url.to_owned(),
            size: n.size,
            max_read: n.max_read,
            allocation: n.allocation,
            bitmap: bitmap.map(|b| (b.to_owned(), n.bitmap)),
        })
    }
    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Conn>> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if c.broken {
            return Err(Error::io(format!("NBD {}", self.url), io::Error::new(io::ErrorKind::BrokenPipe, "the connection broke off earlier")));
        }
        Ok(c)
    }

    fn read_piece(&self, c: &mut Conn, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cookie = c.request(CMD_READ, offset, buf.len() as u32)?;
        loop {
            let (done, typ, len) = match c.reply(cookie)? {
                Reply::Simple(0) => return c.s.read_exact(buf),
                Reply::Simple(err) => return Err(server_error(err, "")),
                Reply::Chunk { done, typ, len } => (done, typ, len),
            };
            match typ {
                REPLY_OFFSET_DATA if len >= 8 => {
                    let at = c.u64()?;
                    let n = len - 8;
                    let from = at.checked_sub(offset).filter(|f| f + n as u64 <= buf.len() as u64).ok_or_else(|| bad_chunk(at, n))? as usize;
                    c.s.read_exact(&mut buf[from..from + n])?;
                }
                REPLY_OFFSET_HOLE if len == 12 => {
                    let at = c.u64()?;
                    let n = c.u32()? as usize;
                    let from = at.checked_sub(offset).filter(|f| f + n as u64 <= buf.len() as u64).ok_or_else(|| bad_chunk(at, n))? as usize;
                    buf[from..from + n].fill(0);
                }
                t if t & REPLY_ERROR_BIT != 0 => return Err(read_error_chunk(c, len)?),
                REPLY_NONE => {}
                _ => {
                    c.bytes(len)?;
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Extents of each negotiated context over `offset..offset + len`.
    fn block_status(&self, c: &mut Conn, offset: u64, len: u32) -> io::Result<Vec<ContextExtents>> {
        let cookie = c.request(CMD_BLOCK_STATUS, offset, len)?;
        let mut out = Vec::new();
        loop {
            let (done, typ, len) = match c.reply(cookie)? {
                Reply::Simple(err) => return Err(server_error(err, "block status")),
                Reply::Chunk { done, typ, len } => (done, typ, len),
            };
            match typ {
                REPLY_BLOCK_STATUS if len >= 4 && (len - 4).is_multiple_of(8) => {
                    let id = c.u32()?;
                    let mut ext = Vec::with_capacity((len - 4) / 8);
                    for _ in 0..(len - 4) / 8 {
                        let l = c.u32()?;
                        let f = c.u32()?;
                        ext.push((l, f));
                    }
                    out.push((id, ext));
                }
                t if t & REPLY_ERROR_BIT != 0 => return Err(read_error_chunk(c, len)?),
                _ => {
                    c.bytes(len)?;
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Ranges of the disk where context `ctx` has extents with `want(flags)`,
    /// sorted and merged.
    fn ranges_where(&self, ctx: u32, want: impl Fn(u32) -> bool) -> Result<Vec<Range<u64>>> {
        let mut c = self.conn()?;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let len = (self.size - pos).min(STATUS_SPAN) as u32;
            let replies = self.block_status(&mut c, pos, len).map_err(|e| {
                c.broken = true;
                Error::io(format!("NBD {}: block status at {pos}", self.url), eof_to_closed(e))
            })?;
            let ext = replies.into_iter().find(|(id, _)| *id == ctx).map(|(_, e)| e).unwrap_or_default();
            let before = pos;
            for (l, f) in ext {
                let end = (pos + l as u64).min(self.size);
                if want(f) && end > pos {
                    match out.last_mut() {
                        Some(last) if last.end == pos => last.end = end,
                        _ => out.push(pos..end),
                    }
                }
                pos = end;
            }
            if pos == before {
                return Err(Error::io(format!("NBD {}: block status at {pos}", self.url), io::Error::new(io::ErrorKind::InvalidData, "the server described no extent")));
            }
        }
        Ok(out)
    }
}

/// One context's answer to a block-status request: its id, and
/// (length, flags) per extent from the requested offset on.
type ContextExtents = (u32, Vec<(u32, u32)>);

/// What the handshake settled.
struct Negotiated {
    size: u64,
    max_read: u32,
    allocation: Option<u32>,
    bitmap: Option<u32>,
}

fn handshake(c: &mut Conn, url: &str, export: &str, bitmap: Option<&str>) -> Result<Negotiated> {
    let mut n = Negotiated { size: 0, max_read: MAX_READ, allocation: None, bitmap: None };
    let io_ctx = |e: io::Error| Error::io(format!("NBD {url}: handshake"), e);
    let not_nbd = || Error::InvalidInput(format!("NBD {url}: the server does not speak the NBD newstyle protocol"));
    if c.u64().map_err(io_ctx)? != NBDMAGIC {
        return Err(not_nbd());
    }
    if c.u64().map_err(io_ctx)? != IHAVEOPT {
        return Err(not_nbd());
    }
    let flags = c.u16().map_err(io_ctx)?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(not_nbd());
    }
    let client = (FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)) as u32;
    c.s.write_all(&client.to_be_bytes()).map_err(io_ctx)?;

    c.send_option(OPT_STRUCTURED_REPLY, &[]).map_err(io_ctx)?;
    let (typ, _) = c.option_reply(OPT_STRUCTURED_REPLY).map_err(io_ctx)?;
    let structured = typ == REP_ACK;

    let name = export.as_bytes();
    if structured {
        let mut queries = vec!["base:allocation".to_owned()];
        if let Some(b) = bitmap {
            queries.push(format!("qemu:dirty-bitmap:{b}"));
        }
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in &queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        c.send_option(OPT_SET_META_CONTEXT, &d).map_err(io_ctx)?;
        loop {
            let (typ, data) = c.option_reply(OPT_SET_META_CONTEXT).map_err(io_ctx)?;
            if typ == REP_META_CONTEXT && data.len() >= 4 {
                let id = u32::from_be_bytes(data[..4].try_into().unwrap());
                let ctx_name = String::from_utf8_lossy(&data[4..]);
                if ctx_name == "base:allocation" {
                    n.allocation = Some(id);
                } else if bitmap.is_some() && ctx_name.strip_prefix("qemu:dirty-bitmap:") == bitmap {
                    n.bitmap = Some(id);
                }
                continue;
            }
            // ACK ends the list; an error means no contexts, which
            // only costs reading holes.
            break;
        }
    }

    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    c.send_option(OPT_GO, &d).map_err(io_ctx)?;
    let mut have_size = false;
    loop {
        let (typ, data) = c.option_reply(OPT_GO).map_err(io_ctx)?;
        match typ {
            REP_INFO if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                n.size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                have_size = true;
            }
            REP_INFO if data.len() >= 14 && u16::from_be_bytes([data[0], data[1]]) == INFO_BLOCK_SIZE => {
                let max = u32::from_be_bytes(data[10..14].try_into().unwrap());
                if max > 0 {
                    n.max_read = max.min(MAX_READ);
                }
            }
            REP_INFO => {}
            REP_ACK => break,
            REP_ERR_UNKNOWN => return Err(Error::NotFound(format!("NBD {url}: the server has no export named {export:?}"))),
            t if t & 0x8000_0000 != 0 => {
                let msg = String::from_utf8_lossy(&data);
                return Err(Error::InvalidInput(format!("NBD {url}: the server refused the export ({}{msg})", if msg.is_empty() { format!("error {t:#x}") } else { String::new() })));
            }
            _ => {}
        }
    }
    if !have_size {
        return Err(Error::InvalidInput(format!("NBD {url}: the server did not say the export's size")));
    }
    Ok(n)
}


fn check_cookie(want: u64, got: u64) -> io::Result<()> {
    if want == got { Ok(()) } else { Err(io::Error::new(io::ErrorKind::InvalidData, format!("reply for request {got}, expected {want}"))) }
}

fn bad_chunk(at: u64, n: usize) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the server sent {n} bytes at {at}, outside the request"))
}

fn read_error_chunk(c: &mut Conn, len: usize) -> io::Result<io::Error> {
    let data = c.bytes(len)?;
    let errno = data.get(..4).map_or(libc::EIO as u32, |b| u32::from_be_bytes(b.try_into().unwrap()));
    let mlen = data.get(4..6).map_or(0, |b| u16::from_be_bytes(b.try_into().unwrap()) as usize);
    let msg = data.get(6..6 + mlen).map(String::from_utf8_lossy).unwrap_or_default();
    Ok(server_error(errno, &msg))
}

impl DiskSource for NbdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut c = self.conn()?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_read as usize);
            let at = offset + done as u64;
            self.read_piece(&mut c, &mut buf[done..done + n], at).map_err(|e| {
                c.broken = true;
                Error::io(format!("NBD {}: read {n} bytes at {at}", self.url), eof_to_closed(e))
            })?;
            done += n;
        }
        Ok(())
    }

    /// Extents `base:allocation` does not report as zero; everything when
    /// the server has no block status.
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        match self.allocation {
            Some(ctx) => self.ranges_where(ctx, |f| f & STATE_ZERO == 0),
            None => Ok(std::iter::once(0..self.size).filter(|r| !r.is_empty()).collect()),
        }
    }

    fn kind(&self) -> &'static str {
        "nbd"
    }

    fn dirty_ranges(&self) -> Result<Option<Vec<Range<u64>>>> {
        match &self.bitmap {
            Some((_, Some(ctx))) => Ok(Some(self.ranges_where(*ctx, |f| f & STATE_DIRTY != 0)?)),
            _ => Ok(None),
        }
    }
}

impl Drop for NbdSource {
    fn drop(&mut self) {
        if let Ok(c) = self.conn.get_mut()
            && !c.broken
        {
            let _ = c.request(CMD_DISC, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("nbd+unix:///os?socket=/run/x.sock").unwrap();
        assert_eq!(u, Url { addr: Addr::Unix("/run/x.sock".into()), export: "os".into() });
        let u = parse_url("nbd://127.0.0.1:10810/my%20disk").unwrap();
        assert_eq!(u, Url { addr: Addr::Tcp("127.0.0.1".into(), 10810), export: "my disk".into() });
        let u = parse_url("nbd://[::1]/").unwrap();
        assert_eq!(u, Url { addr: Addr::Tcp("::1".into(), 10809), export: "".into() });
        assert_eq!(parse_url("nbd://host").unwrap().export, "");
        assert!(parse_url("nbd+unix:///os").is_err());
        assert!(parse_url("nbds://host/x").unwrap_err().to_string().contains("TLS"));
        assert!(parse_url("nbd://host:99999/x").is_err());
        assert!(is_url("nbd+unix:///x?socket=/s") && !is_url("/var/lib/x.qcow2"));
    }
}
