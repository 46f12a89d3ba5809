//! Log output: the subscriber `main` installs, and the access line's fast path.
//!
//! One access line is written per request, so its cost is per-request cost: with
//! tracing-subscriber's default text format it was about 14,000 instructions (a seventh
//! of a proxied request), most of it in styling objects built for every field even with
//! colour off, and in formatting the timestamp from scratch. [`Lines`] writes events of
//! the `access` target itself, byte for byte as the default format would (a test holds
//! it to that), and hands every other event to the default format. [`CachedTime`]
//! formats the timestamp's date and time once per second, as nginx does. The request
//! path's own line ([`Access::log`]) skips even tracing's field visiting when the text
//! format is on without colour: it writes the same bytes straight to the log writer.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The target of the per-request access line.
pub const ACCESS: &str = "access";

/// The filter when `RUST_LOG` is not set: the access and audit lines, and no dependency
/// chatter. rustls warns once per client that sends an IP address as SNI (load tools,
/// some monitors do), which would flood the log; its errors still show.
pub const DEFAULT_FILTER: &str = "info,rustls=error";

/// Installs the process-wide subscriber: text (or JSON) lines on stderr, written by a
/// thread of their own so that a request never waits on the disk or a slow pipe. Not
/// lossy: with its queue full a request waits rather than the line being dropped (access
/// and audit lines are the operator's evidence). The guard flushes queued lines when
/// dropped.
pub fn init(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Buffered: the writer thread drains every line queued, then flushes, so that a busy
    // proxy makes one write(2) per batch rather than one per line (no line waits longer
    // than the batch it came with).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    // Colour only for a person at a terminal: in a file or a log collector the escape
    // codes are noise (they tripled the size of an access line).
    let ansi = std::io::stderr().is_terminal();
    if !json && !ansi {
        // Set once per process; a second `init` (never done) would keep the first writer.
        let _ = DIRECT.set(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(CachedTime)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.event_format(Lines::default()).init();
    }
    guard
}

/// The log writer access lines go to directly, when the format allows it: plain text.
static DIRECT: OnceLock<tracing_appender::non_blocking::NonBlocking> = OnceLock::new();

thread_local! {
    /// The line being written: one buffer per thread, reused.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// One request's access line.
pub struct Access<'a> {
    pub route: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    pub latency: Millis,
    pub upstream: Millis,
    pub peer: &'a str,
}

/// Whether the filter lets access lines through (checked before their fields are made).
pub fn access_enabled() -> bool {
    tracing::enabled!(target: ACCESS, tracing::Level::INFO)
}

impl Access<'_> {
    /// Logs the line (once [`access_enabled`] said so): as an event, or with the text
    /// format (see [`init`]) written directly, byte for byte as [`Lines`] would.
    pub fn log(&self) {
        let Some(writer) = DIRECT.get() else {
            tracing::info!(
                target: ACCESS,
                route = %self.route,
                method = %self.method,
                path = %self.path,
                status = self.status,
                latency_ms = %self.latency,
                upstream_ms = %self.upstream,
                peer = %self.peer,
            );
            return;
        };
        let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return;
        };
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            if self.write(&mut *line, since).is_ok() {
                // The writer only fails once its thread is gone (the process is ending).
                let _ = writer.clone().write_all(line.as_bytes());
            }
        });
    }

    /// The text line, with the timestamp of `since`.
    fn write(&self, w: &mut impl fmt::Write, since: Duration) -> fmt::Result {
        write_timestamp(w, since)?;
        w.write_str(level(&tracing::Level::INFO))?;
        for (name, value) in [
            ("access: route=", self.route),
            (" method=", self.method.as_str()),
            (" path=", self.path),
            (" status=", itoa::Buffer::new().format(self.status)),
        ] {
            w.write_str(name)?;
            w.write_str(value)?;
        }
        w.write_str(" latency_ms=")?;
        self.latency.write(w)?;
        w.write_str(" upstream_ms=")?;
        self.upstream.write(w)?;
        w.write_str(" peer=")?;
        w.write_str(self.peer)?;
        w.write_char('\n')
    }
}

/// The text format: tracing-subscriber's default ([`Full`]), with access lines written
/// directly.
pub struct Lines<T = CachedTime> {
    timer: T,
    inner: Format<Full, T>,
}

impl Default for Lines<CachedTime> {
    fn default() -> Self {
        Lines::with_timer(CachedTime)
    }
}

impl<T: FormatTime + Clone> Lines<T> {
    pub fn with_timer(timer: T) -> Self {
        Lines {
            inner: format::format().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for Lines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The default format for everything the fast path does not write the same way:
        // colour, span context, a message (which it escapes), other targets.
        if meta.target() != ACCESS
            || writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
            || meta.fields().field("message").is_some()
        {
            return self.inner.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level(meta.level()))?;
        writer.write_str("access: ")?;
        let mut fields = PlainFields {
            w: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level as the default format pads it, with the spaces around it.
fn level(l: &tracing::Level) -> &'static str {
    match *l {
        tracing::Level::TRACE => " TRACE ",
        tracing::Level::DEBUG => " DEBUG ",
        tracing::Level::INFO => "  INFO ",
        tracing::Level::WARN => "  WARN ",
        tracing::Level::ERROR => " ERROR ",
    }
}

/// `name=value` pairs separated by spaces, values as the default format writes them
/// (`Debug`, so strings quoted), without its per-field styling.
struct PlainFields<'w, 'a> {
    w: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl PlainFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.w.write_char(' ')?;
        }
        let name = field.name();
        self.w.write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.w.write_char('=')
    }
}

impl Visit for PlainFields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| write!(self.w, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.w.write_str(itoa::Buffer::new().format(value)));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.w.write_str(itoa::Buffer::new().format(value)));
        }
    }
}

/// RFC 3339 UTC timestamps with microseconds, as tracing-subscriber's default timer
/// writes them (`2026-12-05T20:26:00.123456Z`); the date and time part is formatted once
/// per second per thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct CachedTime;

thread_local! {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return Err(fmt::Error);
        };
        write_timestamp(w, since)
    }
}

fn write_timestamp(w: &mut impl fmt::Write, since: Duration) -> fmt::Result {
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let mut s = humantime::format_rfc3339_seconds(at).to_string();
            s.pop(); // the `Z`, written after the fraction
            *cached = (secs, s);
        }
        w.write_str(&cached.1)
    })?;
    // Six digits with their leading zeros: the digits of 1_000_000 + micros but the first.
    let mut digits = itoa::Buffer::new();
    let padded = digits.format(1_000_000 + since.subsec_micros());
    w.write_char('.')?;
    w.write_str(padded.get(1..).unwrap_or("000000"))?;
    w.write_char('Z')
}

/// A duration in milliseconds with three decimals (`0.412`), from integer microseconds:
/// the access line's latencies, without float formatting on every request. `None`
/// writes `-1.000` (the request never reached the app).
pub struct Millis(pub Option<Duration>);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

impl Millis {
    fn write(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self.0 {
            None => f.write_str("-1.000"),
            Some(d) => {
                let us = d.as_micros();
                let mut b = itoa::Buffer::new();
                f.write_str(b.format(us / 1000))?;
                let frac = us % 1000;
                f.write_str(match frac {
                    0..=9 => ".00",
                    10..=99 => ".0",
                    _ => ".",
                })?;
                f.write_str(b.format(frac))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::info;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|v| v.clone()).unwrap_or_default())
                .unwrap_or_default()
        }
    }

    #[derive(Clone, Copy)]
    struct Fixed;
    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-05T20:26:00.000042Z")
        }
    }

    /// The events `service` and `listener` write, and others around them.
    fn emit() {
        let path = "/a b\"c";
        info!(target: "access", route = %"session", method = %http::Method::GET, path = %path,
            status = 200u16, latency_ms = %Millis(Some(Duration::from_micros(412))),
            upstream_ms = %Millis(None), peer = %std::net::Ipv4Addr::LOCALHOST);
        info!(target: "access", route = "-", method = "-", path = "-", status = 400u16, peer = %"::1", "unparseable request");
        tracing::warn!(target: "access", r#type = "x", signed = -3i64, flag = true, "{}", "msg");
        info!(target: "audit", event = "created", id_hash = "0a1b2c3d");
        let span = tracing::info_span!("conn", n = 1);
        let _in = span.enter();
        info!(target: "access", route = "in-span", status = 200u16);
    }

    fn lines_with(fast: bool) -> String {
        let out = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_timer(Fixed)
            .with_writer(out.clone());
        if fast {
            tracing::subscriber::with_default(
                builder.event_format(Lines::with_timer(Fixed)).finish(),
                emit,
            );
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        out.text()
    }

    #[test]
    fn access_lines_read_as_the_default_format_writes_them() {
        let default = lines_with(false);
        let fast = lines_with(true);
        assert!(
            default.contains("  INFO access: route=session method=GET path=/a b\"c status=200 latency_ms=0.412 upstream_ms=-1.000 peer=127.0.0.1\n"),
            "{default}"
        );
        assert_eq!(fast, default);
        assert_eq!(fast.lines().count(), 5, "{fast}");
    }

    /// What `Access::log` writes directly is the line the default format writes for its
    /// event (which is also what it logs without the direct writer).
    #[test]
    fn the_direct_access_line_is_the_default_formats_line() {
        let line = Access {
            route: "session",
            method: &http::Method::GET,
            path: "/a b\"c",
            status: 200,
            latency: Millis(Some(Duration::from_micros(412))),
            upstream: Millis(None),
            peer: "127.0.0.1",
        };
        let out = Capture::default();
        let default = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_timer(Fixed)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(default, || line.log());
        let mut direct = String::new();
        // The instant `Fixed` writes: 2026-12-05T20:26:00.000042Z.
        line.write(&mut direct, Duration::new(1_796_502_360, 42_000))
            .expect("formats");
        assert_eq!(direct, out.text());
        assert!(direct.ends_with("INFO access: route=session method=GET path=/a b\"c status=200 latency_ms=0.412 upstream_ms=-1.000 peer=127.0.0.1\n"), "{direct}");
    }

    #[test]
    fn timestamps_match_the_default_timer() {
        for since in [
            Duration::ZERO,
            Duration::new(1_764_966_360, 42_000),
            Duration::new(1_764_966_360, 999_999_999),
            Duration::new(951_782_400, 5_000_000), // 2000-02-29
        ] {
            let mut fast = String::new();
            write_timestamp(&mut fast, since).expect("formats");
            // The same instant through humantime's own microsecond format.
            let expected = humantime::format_rfc3339_micros(UNIX_EPOCH + since).to_string();
            assert_eq!(fast, expected);
        }
    }

    #[test]
    fn millis_have_three_decimals() {
        let cases = [
            (0, "0.000"),
            (7, "0.007"),
            (42, "0.042"),
            (412, "0.412"),
            (1_000, "1.000"),
            (12_345_678, "12345.678"),
        ];
        for (us, text) in cases {
            assert_eq!(Millis(Some(Duration::from_micros(us))).to_string(), text);
        }
        assert_eq!(Millis(None).to_string(), "-1.000");
    }
}
