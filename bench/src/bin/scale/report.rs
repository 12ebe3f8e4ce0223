//! What each size measured, against the goals of issue 16, as a Markdown table and as JSON.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::fleet::{Fleet, epoch_secs};
use crate::reads::{FirstFill, Polls, Tally};

/// The goal for RSS above idle, per active series.
const KIB_PER_SERIES_GOAL: f64 = 1.0;
/// The goal for request latency at p99, milliseconds.
const LATENCY_P99_GOAL_MS: f64 = 1.0;
/// How much later than one refresh interval a served value may be, at p99.
const AGE_SLACK: Duration = Duration::from_secs(2);

/// Raw measurements of one size.
#[derive(Debug)]
pub struct Phases {
    /// The first fill.
    pub first_fill: FirstFill,
    /// GetMetricData calls during the first fill.
    pub first_fill_calls: u64,
    /// Refreshes in the counted window (and in the CPU window).
    pub refreshes: u32,
    /// GetMetricData calls in the counted window (HPAs polling).
    pub counted_calls: u64,
    /// Metrics requested in the counted window.
    pub counted_metrics: u64,
    /// Every refresh from the counted window on: calls, metrics, when its last call arrived.
    pub ticks: Vec<(u64, u64, Option<Duration>)>,
    /// The HPAs' reads.
    pub hpas: Polls,
    /// How long the HPAs polled.
    pub hpa_seconds: f64,
    /// The fixed-rate reads across a refresh.
    pub latency: Tally,
    /// How long they ran.
    pub latency_window: Duration,
    /// (value requests served in <= 1 ms, all) by the adapter's own histogram in that phase.
    pub server: (u64, u64),
    /// RSS before any request, MiB.
    pub rss_idle: f64,
    /// RSS with the benchmark's connections open and used, before any series, MiB.
    pub rss_connected: f64,
    /// RSS with every series active, at the end of the HPAs' polling, MiB.
    pub rss_active: f64,
    /// RSS after the window without requests, MiB.
    pub rss_after: f64,
    /// CPU seconds per second with the connections open, before any series.
    pub idle_cpu_per_second: f64,
    /// CPU time in the window without requests.
    pub cpu: Duration,
    /// That window.
    pub cpu_window: Duration,
    /// GetMetricData calls in that window.
    pub cpu_window_calls: u64,
    /// Metrics requested in that window.
    pub cpu_window_metrics: u64,
    /// SubjectAccessReviews the fake API server answered for this size.
    pub access_reviews: u64,
    /// CPU time of the emulator's threads in the counted window.
    pub emulator_cpu: Duration,
    /// Load averages when the size started.
    pub load_before: String,
    /// And when it ended.
    pub load_after: String,
}

/// One size of the curve.
#[derive(Debug)]
pub struct SizeResult {
    /// Its shape.
    pub fleet: Fleet,
    /// The adapter's CloudWatch budget.
    pub calls_per_second: f64,
    /// The fixed rate of the latency phase.
    pub rate: u64,
    /// What was measured.
    pub phases: Phases,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

impl SizeResult {
    fn calls_per_refresh(&self) -> f64 {
        self.phases.counted_calls as f64 / f64::from(self.phases.refreshes)
    }

    fn metrics_per_refresh(&self) -> f64 {
        self.phases.counted_metrics as f64 / f64::from(self.phases.refreshes)
    }

    /// Share of the series refreshed per refresh interval while the HPAs poll.
    fn coverage(&self) -> f64 {
        self.metrics_per_refresh() / self.fleet.series as f64
    }

    /// Share of the series refreshed per refresh interval with no requests.
    fn quiet_coverage(&self) -> f64 {
        self.phases.cpu_window_metrics as f64
            / (f64::from(self.phases.refreshes) * self.fleet.series as f64)
    }

    /// How long after its tick each refresh's last call arrived, seconds.
    fn refresh_durations(&self) -> Vec<f64> {
        self.phases
            .ticks
            .iter()
            .filter_map(|(_, _, last)| last.map(|d| d.as_secs_f64()))
            .collect()
    }

    /// Every value served from the first refresh after the first fill on: the HPAs' and the
    /// fixed-rate phase's.
    fn ages(&self) -> Tally {
        let mut all = self.phases.hpas.steady.clone();
        // Both come from the same constructor, so merging cannot fail on bounds.
        let _ = all.merge(&self.phases.latency);
        all
    }

    fn age_goal(&self) -> f64 {
        (self.fleet.refresh_interval() + AGE_SLACK).as_secs_f64()
    }

    /// KiB of RSS per active series above the idle process.
    fn kib_per_series(&self) -> f64 {
        (self.phases.rss_active - self.phases.rss_idle) * 1024.0 / self.fleet.series as f64
    }

    /// KiB of RSS per active series above the process with its connections open.
    fn kib_per_series_connected(&self) -> f64 {
        (self.phases.rss_active - self.phases.rss_connected) * 1024.0 / self.fleet.series as f64
    }

    /// All HPA reads.
    fn hpa_reads(&self) -> Tally {
        let mut all = self.phases.hpas.settling.clone();
        let _ = all.merge(&self.phases.hpas.steady);
        all
    }

    /// CPU milliseconds per refresh cycle: all of it, and above the idle rate.
    fn cpu_per_cycle_ms(&self) -> (f64, f64) {
        let p = &self.phases;
        let cycles = f64::from(p.refreshes);
        let gross = p.cpu.as_secs_f64() * 1000.0 / cycles;
        let idle = p.idle_cpu_per_second * p.cpu_window.as_secs_f64() * 1000.0 / cycles;
        (gross, (gross - idle).max(0.0))
    }

    fn achieved_rate(&self) -> f64 {
        self.phases.latency.answered as f64 / self.phases.latency_window.as_secs_f64()
    }

    /// One line for progress output.
    pub fn summary_line(&self) -> String {
        let ages = self.ages();
        format!(
            "   {} series: {:.1} calls/refresh (goal {}), value age p99 {:.1} s (goal {:.0} s), p99 {:.3} ms at {} req/s, {:.2} KiB/series, {:.0} ms CPU/refresh, first fill {:.1} s",
            self.fleet.series,
            self.calls_per_refresh(),
            self.fleet.calls_per_refresh(),
            ages.age_s(0.99),
            self.age_goal(),
            self.phases.latency.latency_ms(0.99),
            self.rate,
            self.kib_per_series(),
            self.cpu_per_cycle_ms().0,
            self.phases.first_fill.elapsed.as_secs_f64(),
        )
    }

    fn json(&self, previous: Option<&SizeResult>) -> Value {
        let p = &self.phases;
        let ages = self.ages();
        let hpas = self.hpa_reads();
        let (gross, net) = self.cpu_per_cycle_ms();
        let durations = self.refresh_durations();
        json!({
            "series": self.fleet.series,
            "tenants": self.fleet.active_tenants(),
            "hpas": self.fleet.hpas,
            "refresh_interval_s": self.fleet.period,
            "cloudwatch_calls_per_second": self.calls_per_second,
            "calls_per_refresh": {
                "measured": self.calls_per_refresh(),
                "goal": self.fleet.calls_per_refresh(),
                "metrics_requested_per_refresh": self.metrics_per_refresh(),
                "ceil_metrics_requested_over_500": (self.metrics_per_refresh() / 500.0).ceil(),
                "share_of_series_refreshed_per_interval": self.coverage(),
                "share_of_series_refreshed_per_interval_without_requests": self.quiet_coverage(),
                "refreshes_counted": p.refreshes,
                "per_refresh": p.ticks.iter().map(|(calls, metrics, last)| json!({
                    "calls": calls,
                    "metrics_requested": metrics,
                    "last_call_after_tick_s": last.map(|d| d.as_secs_f64()),
                })).collect::<Vec<_>>(),
            },
            "refresh_duration_s": {
                "median": median(durations.clone()),
                "max": durations.iter().copied().reduce(f64::max),
                "budget_bound": self.fleet.calls_per_refresh() as f64 / self.calls_per_second,
            },
            "value_age_s": {
                "p50": ages.age_s(0.5),
                "p99": ages.age_s(0.99),
                "max": ages.age.max() as f64 / 1000.0,
                "goal_p99": self.age_goal(),
                "values": ages.values,
                "stamped_in_the_future": ages.ahead,
                "before_the_first_refresh_after_the_fill": {
                    "values": p.hpas.settling.values,
                    "p99": p.hpas.settling.age_s(0.99),
                    "max": p.hpas.settling.age.max() as f64 / 1000.0,
                },
            },
            "latency_phase": {
                "rate_goal": self.rate,
                "rate_achieved": self.achieved_rate(),
                "seconds": p.latency_window.as_secs_f64(),
                "p50_ms": p.latency.latency_ms(0.5),
                "p90_ms": p.latency.latency_ms(0.9),
                "p99_ms": p.latency.latency_ms(0.99),
                "max_ms": p.latency.latency.max() as f64 / 1000.0,
                "goal_p99_ms": LATENCY_P99_GOAL_MS,
                "errors": p.latency.errors,
                "server_side_within_1ms": self.server_share(),
                "generator_lag_p99_ms": p.latency.lag.value_at_quantile(0.99) as f64 / 1000.0,
            },
            "hpa_polling": {
                "seconds": p.hpa_seconds,
                "reads": hpas.answered,
                "reads_per_second": hpas.answered as f64 / p.hpa_seconds.max(1e-9),
                "errors": hpas.errors,
                "p50_ms": hpas.latency_ms(0.5),
                "p99_ms": hpas.latency_ms(0.99),
            },
            "memory": {
                "rss_idle_mib": p.rss_idle,
                "rss_connections_open_mib": p.rss_connected,
                "rss_active_mib": p.rss_active,
                "rss_after_quiet_window_mib": p.rss_after,
                "kib_per_series_above_idle": self.kib_per_series(),
                "kib_per_series_above_connections_open": self.kib_per_series_connected(),
                "kib_per_series_since_previous_size": previous.map(|prev| self.marginal_kib(prev)),
                "goal_kib_per_series": KIB_PER_SERIES_GOAL,
            },
            "cpu": {
                "window_s": p.cpu_window.as_secs_f64(),
                "cpu_s": p.cpu.as_secs_f64(),
                "refresh_cycles": p.refreshes,
                "calls_in_window": p.cpu_window_calls,
                "metrics_requested_in_window": p.cpu_window_metrics,
                "per_cycle_ms": gross,
                "per_cycle_above_idle_ms": net,
                "idle_cpu_per_second": p.idle_cpu_per_second,
            },
            "first_fill": {
                "seconds": p.first_fill.elapsed.as_secs_f64(),
                "calls": p.first_fill_calls,
                "reads_retried": p.first_fill.retried,
            },
            "subject_access_reviews": p.access_reviews,
            "emulator_cpu_per_call_ms": self.emulator_ms_per_call(),
            "load_average": {"before": p.load_before, "after": p.load_after},
        })
    }

    /// The emulator's CPU milliseconds per GetMetricData call (of up to 500 queries).
    fn emulator_ms_per_call(&self) -> f64 {
        self.phases.emulator_cpu.as_secs_f64() * 1000.0 / self.phases.counted_calls.max(1) as f64
    }

    /// Share of the fixed-rate phase's value requests the adapter served in <= 1 ms.
    fn server_share(&self) -> f64 {
        self.phases.server.0 as f64 / self.phases.server.1.max(1) as f64
    }

    /// KiB of RSS per series added since a smaller size (both with every series active).
    fn marginal_kib(&self, smaller: &SizeResult) -> f64 {
        (self.phases.rss_active - smaller.phases.rss_active) * 1024.0
            / (self.fleet.series as f64 - smaller.fleet.series as f64).max(1.0)
    }
}

/// A whole run.
#[derive(Debug)]
pub struct Report {
    /// When it started.
    pub started: SystemTime,
    /// The caller's label (e.g. the commit).
    pub label: String,
    /// Cores the machine offers.
    pub cores: usize,
    /// One per size, smallest first.
    pub results: Vec<SizeResult>,
}

fn mark(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

impl Report {
    /// Each size with the next smaller one, if any.
    fn sizes(&self) -> impl Iterator<Item = (&SizeResult, Option<&SizeResult>)> {
        self.results
            .iter()
            .enumerate()
            .map(|(i, r)| (r, i.checked_sub(1).map(|j| &self.results[j])))
    }

    /// Everything, as JSON.
    pub fn json(&self) -> Value {
        json!({
            "benchmark": "scale",
            "started_epoch_s": epoch_secs(self.started),
            "label": self.label,
            "cores": self.cores,
            "sizes": self.sizes().map(|(r, previous)| r.json(previous)).collect::<Vec<_>>(),
        })
    }

    /// The tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let first = self.results.first();
        out.push_str(&format!(
            "# cloudwatch-metrics-adapter at scale{} ({} cores; {} tenants, {} HPAs polling every 15 s; refresh interval {} s; {} CloudWatch calls/s)\n\n",
            if self.label.is_empty() { String::new() } else { format!(", {}", self.label) },
            self.cores,
            first.map_or(0, |r| r.fleet.tenants),
            first.map_or(0, |r| r.fleet.hpas),
            first.map_or(0, |r| r.fleet.period),
            first.map_or(0.0, |r| r.calls_per_second),
        ));
        out.push_str("| series | GetMetricData calls per refresh (goal: ceil(series / 500)) | series refreshed per interval | refresh takes (median, max) | value age p50 / p99 (goal p99) | request p50 / p99 at fixed rate, client side (goal p99 < 1 ms) | served <= 1 ms, adapter side | RSS idle -> active | RSS per series above idle (goal <= 1 KiB) | CPU per refresh cycle | first fill |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.results {
            let p = &r.phases;
            let ages = r.ages();
            let durations = r.refresh_durations();
            let (gross, _) = r.cpu_per_cycle_ms();
            out.push_str(&format!(
                "| {} | {:.1} ({}, {}) | {:.1}% ({:.1}% without requests) | {:.1} s, {:.1} s | {:.1} / {:.1} s ({:.0} s, {}) | {:.3} / {:.3} ms at {:.0} req/s ({}) | {:.2}% | {:.1} -> {:.1} MiB | {:.2} KiB ({}) | {:.0} ms | {:.1} s, {} calls |\n",
                r.fleet.series,
                r.calls_per_refresh(),
                r.fleet.calls_per_refresh(),
                mark((r.calls_per_refresh() - r.fleet.calls_per_refresh() as f64).abs() < 0.5),
                100.0 * r.coverage(),
                100.0 * r.quiet_coverage(),
                median(durations.clone()).unwrap_or(0.0),
                durations.iter().copied().fold(0.0, f64::max),
                ages.age_s(0.5),
                ages.age_s(0.99),
                r.age_goal(),
                mark(ages.age_s(0.99) <= r.age_goal()),
                p.latency.latency_ms(0.5),
                p.latency.latency_ms(0.99),
                r.achieved_rate(),
                mark(p.latency.latency_ms(0.99) < LATENCY_P99_GOAL_MS),
                100.0 * r.server_share(),
                p.rss_idle,
                p.rss_active,
                r.kib_per_series(),
                mark(r.kib_per_series() <= KIB_PER_SERIES_GOAL),
                gross,
                p.first_fill.elapsed.as_secs_f64(),
                p.first_fill_calls,
            ));
        }
        out.push_str("\n| series | metrics requested per refresh (ceil / 500: calls if every call is full) | value age before the first refresh after the fill (p99, max) | HPA reads (per s, errors, p99) | fixed-rate errors, generator lag p99 | RSS with connections open -> per series above it, per series since the smaller size | CPU per cycle above idle (calls in window) | RSS after quiet window | SubjectAccessReviews | emulator CPU per call | load average before -> after |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (r, previous) in self.sizes() {
            let p = &r.phases;
            let hpas = r.hpa_reads();
            let (_, net) = r.cpu_per_cycle_ms();
            out.push_str(&format!(
                "| {} | {:.0} ({:.0}) | {:.1} s, {:.1} s | {} ({:.0}/s, {}, {:.3} ms) | {}, {:.3} ms | {:.1} MiB -> {:.2} KiB, {} | {:.0} ms ({}) | {:.1} MiB | {} | {:.1} ms | {} -> {} |\n",
                r.fleet.series,
                r.metrics_per_refresh(),
                (r.metrics_per_refresh() / 500.0).ceil(),
                p.hpas.settling.age_s(0.99),
                p.hpas.settling.age.max() as f64 / 1000.0,
                hpas.answered,
                hpas.answered as f64 / p.hpa_seconds.max(1e-9),
                hpas.error_count(),
                hpas.latency_ms(0.99),
                p.latency.error_count(),
                p.latency.lag.value_at_quantile(0.99) as f64 / 1000.0,
                p.rss_connected,
                r.kib_per_series_connected(),
                previous.map_or("-".to_string(), |prev| format!("{:.2} KiB", r.marginal_kib(prev))),
                net,
                p.cpu_window_calls,
                p.rss_after,
                p.access_reviews,
                r.emulator_ms_per_call(),
                p.load_before,
                p.load_after,
            ));
        }
        out
    }
}
