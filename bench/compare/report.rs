//! What the runs measured and how it is printed: every value per figure, server and run, and the
//! tables of medians, ratios against the peer of the same run, targets and verdicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The figures, each measured once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    /// Wall time of one client's GET of the blob, cold.
    Cold1,
    /// Wall time until all of N clients asking at once have the blob, cold.
    ColdMany,
    /// Wall time of one client's cold GET when the origin is behind a 1 Gbit/s link (a relay that
    /// passes 125 MB/s), against the origin asked directly through the same link.
    ColdLink,
    /// MiB/s of one client fetching the cached blob over and over.
    Warm1,
    /// MiB/s of N clients doing so at once.
    WarmMany,
    /// req/s of manifest HEADs by tag.
    Head,
    /// req/s of manifest GETs by tag.
    Get,
    /// Seconds to the last byte of a Range of the first MiB, asked while the blob's download is at ~20%.
    Range,
}

impl Figure {
    fn label(self, clients: usize) -> String {
        match self {
            Figure::Cold1 => "cold blob, 1 client: wall s".into(),
            Figure::ColdMany => format!("cold blob, {clients} clients: wall s"),
            Figure::ColdLink => "cold blob, 1 client, 1 Gbit/s origin: wall s".into(),
            Figure::Warm1 => "warm blob, 1 client: MiB/s".into(),
            Figure::WarmMany => format!("warm blob, {clients} clients: MiB/s"),
            Figure::Head => "cached manifest HEAD by tag: req/s".into(),
            Figure::Get => "cached manifest GET by tag: req/s".into(),
            Figure::Range => "Range 1st MiB at ~20% of a fill: s".into(),
        }
    }

    /// Times are better low, rates high.
    fn lower_is_better(self) -> bool {
        matches!(self, Figure::Cold1 | Figure::ColdMany | Figure::ColdLink | Figure::Range)
    }

    fn decimals(self) -> usize {
        match self {
            Figure::Cold1 | Figure::ColdMany | Figure::ColdLink => 2,
            Figure::Range => 3,
            _ => 0,
        }
    }
}

/// Who served a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    /// ocicache on its local disk.
    Ocicache,
    /// ocicache with `--storage s3://...` on moto.
    OcicacheS3,
    /// The origin registry itself, asked directly.
    Upstream,
    /// docker-registry in proxy mode.
    Proxy,
    /// nginx serving the same bytes as static files.
    Nginx,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Ocicache => "ocicache",
            Server::OcicacheS3 => "ocicache-s3",
            Server::Upstream => "upstream",
            Server::Proxy => "proxy",
            Server::Nginx => "nginx",
        }
    }
}

/// Every value, one slot per run (None: that run of the figure failed or was not measured).
#[derive(Default)]
pub struct Samples {
    values: BTreeMap<(Figure, Server), Vec<Option<f64>>>,
}

impl Samples {
    pub fn record(&mut self, figure: Figure, server: Server, run: usize, value: Option<f64>) {
        let v = self.values.entry((figure, server)).or_default();
        if v.len() <= run {
            v.resize(run + 1, None);
        }
        v[run] = value;
    }

    fn runs(&self, figure: Figure, server: Server) -> &[Option<f64>] {
        self.values.get(&(figure, server)).map_or(&[], Vec::as_slice)
    }

    fn median_of(&self, figure: Figure, server: Server) -> Option<f64> {
        median(self.runs(figure, server).iter().flatten().copied().collect())
    }

    /// The median over runs of `a / b`, each ratio taken within one run (same load on the machine).
    fn ratio(&self, figure: Figure, a: Server, b: Server) -> Option<f64> {
        let (a, b) = (self.runs(figure, a), self.runs(figure, b));
        median(a.iter().zip(b).filter_map(|(x, y)| Some(x.as_ref()? / y.as_ref()?)).collect())
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// "met" or "MISSED" (or "-" when there is nothing to judge).
fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

/// A row of the main table: ocicache against `peer`; the ratio must be at most `target` for times,
/// at least for rates.
pub struct PeerRow {
    pub figure: Figure,
    pub peer: Server,
    pub target: f64,
}

/// Everything the report prints besides the values.
pub struct Context {
    pub clients: usize,
    /// Peak RSS over every disk-mode ocicache process of the run, and over every S3-mode one.
    pub rss_disk: Option<f64>,
    pub rss_s3: Option<f64>,
    pub rss_target: f64,
    pub rss_s3_allowance: f64,
    pub range_target: f64,
    /// Whether the S3 table is printed.
    pub s3: bool,
}

const HEAD_LINE: &str =
    "figure                                     ocicache       peer  peer        ratio  target     result";

pub fn tables(samples: &Samples, rows: &[PeerRow], cx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{HEAD_LINE}");
    let _ = writeln!(out, "{}", "-".repeat(HEAD_LINE.len()));
    for row in rows {
        let f = row.figure;
        if samples.runs(f, Server::Ocicache).is_empty() {
            continue;
        }
        let ratio = samples.ratio(f, Server::Ocicache, row.peer);
        let (op, ok) = if f.lower_is_better() {
            ("<=", ratio.map(|r| r <= row.target))
        } else {
            (">=", ratio.map(|r| r >= row.target))
        };
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>10}  {:<9} {:>7}  {:<9}  {}",
            f.label(cx.clients),
            num(samples.median_of(f, Server::Ocicache), f.decimals()),
            num(samples.median_of(f, row.peer), f.decimals()),
            row.peer.name(),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            format!("{op} {:.2}x", row.target),
            verdict(ok),
        );
    }
    if let Some(rss) = cx.rss_disk {
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>10}  {:<9} {:>7}  {:<9}  {}",
            "peak RSS (VmHWM), every process: MiB",
            num(Some(rss), 1),
            "-",
            "-",
            "-",
            format!("<= {:.0} MiB", cx.rss_target),
            verdict(Some(rss <= cx.rss_target)),
        );
    }
    let range = samples.median_of(Figure::Range, Server::Ocicache);
    if !samples.runs(Figure::Range, Server::Ocicache).is_empty() {
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>10}  {:<9} {:>7}  {:<9}  {}",
            Figure::Range.label(cx.clients),
            num(range, 3),
            "-",
            "-",
            "-",
            format!("<= {:.2} s", cx.range_target),
            verdict(range.map(|r| r <= cx.range_target)),
        );
    }
    if cx.s3 {
        out.push_str(&s3_table(samples, cx));
    }
    out
}

const S3_HEAD_LINE: &str =
    "figure                                  ocicache-s3  ocicache-disk    s3/disk  target      result";

/// S3 (tiered) mode against disk mode: rates at least 0.9x, times at most 1/0.9x (the same speed
/// bound), peak RSS at most 16 MiB above disk mode's.
fn s3_table(samples: &Samples, cx: &Context) -> String {
    let mut out = String::from("\nS3 (tiered) mode against disk mode, same run:\n");
    let _ = writeln!(out, "{S3_HEAD_LINE}");
    let _ = writeln!(out, "{}", "-".repeat(S3_HEAD_LINE.len()));
    let speed = 0.9;
    for f in [Figure::Cold1, Figure::ColdMany, Figure::Warm1, Figure::WarmMany, Figure::Head, Figure::Get] {
        if samples.runs(f, Server::OcicacheS3).is_empty() {
            continue;
        }
        let ratio = samples.ratio(f, Server::OcicacheS3, Server::Ocicache);
        let (target, ok) = if f.lower_is_better() {
            (format!("<= {:.2}x", 1.0 / speed), ratio.map(|r| r <= 1.0 / speed))
        } else {
            (format!(">= {speed:.2}x"), ratio.map(|r| r >= speed))
        };
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>14} {:>10}  {:<10}  {}",
            f.label(cx.clients),
            num(samples.median_of(f, Server::OcicacheS3), f.decimals()),
            num(samples.median_of(f, Server::Ocicache), f.decimals()),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            target,
            verdict(ok),
        );
    }
    if let (Some(s3), Some(disk)) = (cx.rss_s3, cx.rss_disk) {
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>14} {:>10}  {:<10}  {}",
            "peak RSS (VmHWM), every process: MiB",
            num(Some(s3), 1),
            num(Some(disk), 1),
            format!("{:+.1} MiB", s3 - disk),
            format!("<= +{:.0} MiB", cx.rss_s3_allowance),
            verdict(Some(s3 <= disk + cx.rss_s3_allowance)),
        );
    }
    out
}

/// Every value of every run, for the record below the tables.
pub fn every_run(samples: &Samples, clients: usize) -> String {
    let mut out = String::new();
    for ((figure, server), v) in &samples.values {
        let vals: Vec<String> = v.iter().map(|x| num(*x, figure.decimals().max(1))).collect();
        let _ = writeln!(out, "  {:<40} {:<12} {}", figure.label(clients), server.name(), vals.join(" "));
    }
    out
}
