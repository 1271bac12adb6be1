//! A discrete-event simulation of a wisp cluster's request routing, at
//! sizes this machine cannot run: N nodes (1 to 256), a Zipf-distributed
//! population of functions, bursty Poisson arrivals, a fixed number of
//! execution slots and of kept instances per node. It compares where
//! requests go — rendezvous hashing with spill-over (wisp's own
//! `wisp::cluster::ring::place`, not a copy), a random node, the
//! least-loaded node — by warm-hit rate (a request finds an idle instance
//! of its function on the node it lands on), cold starts per second and the
//! p99 of the time a request waits for a slot; and what one node failing
//! does to each.
//!
//! The model (kept small on purpose; every number is a flag's default):
//! a request runs on one slot of a node for an exponential service time,
//! plus a cold start when the node has no idle instance of its function; a
//! node keeps at most `--instances` instances (busy or idle) and evicts its
//! least recently used idle one to make a new one; an instance serves one
//! request at a time. A request that finds no free slot where it is sent
//! waits in that node's FIFO queue.
//!
//!   cargo run --release -p wisp-sim -- [--functions 10000] [--requests 400000] [--svg FILE]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use wisp::cluster::ring;

/// SplitMix64: deterministic, seedable, enough for a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Rendezvous,
    Random,
    LeastLoaded,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Rendezvous => "rendezvous",
            Policy::Random => "random",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}

#[derive(Clone, Copy)]
struct Params {
    functions: usize,
    zipf: f64,
    requests: usize,
    warmup: usize,
    slots: usize,
    instances: usize,
    service_ms: f64,
    cold_ms: f64,
    utilisation: f64,
    burst_factor: f64,
    burst_share: f64,
    seed: u64,
}

struct Node {
    name: String,
    alive: bool,
    busy: usize,
    queue: VecDeque<(usize, f64)>,
    /// Idle instances by function: when each was last used (a stack).
    idle: HashMap<usize, Vec<f64>>,
    idle_count: usize,
    busy_instances: usize,
}

#[derive(Default, Clone, Copy, Debug)]
struct Outcome {
    warm_rate: f64,
    cold_per_s: f64,
    p99_wait_ms: f64,
    /// Requests in flight on a node when it failed.
    lost: usize,
    /// After a failure: the warm-hit rate of the requests that followed it.
    warm_after: f64,
}

#[derive(PartialEq)]
struct Time(f64);
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    /// A request of function `f` is done on `node`.
    Done {
        node: usize,
        f: usize,
    },
    Fail,
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / (k as f64).powf(s);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

fn simulate(p: Params, nodes_n: usize, policy: Policy, fail: bool, cdf: &[f64]) -> Outcome {
    let mut rng = Rng(p.seed ^ nodes_n as u64);
    let keys: Vec<String> = (0..p.functions).map(|f| format!("fn-{f}")).collect();
    let mut nodes: Vec<Node> = (0..nodes_n)
        .map(|i| Node {
            name: format!("node-{i}"),
            alive: true,
            busy: 0,
            queue: VecDeque::new(),
            idle: HashMap::new(),
            idle_count: 0,
            busy_instances: 0,
        })
        .collect();
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let service = p.service_ms / 1000.0;
    let cold = p.cold_ms / 1000.0;
    // Mean arrival rate for the target utilisation of every slot, were
    // half the requests cold starts.
    let rate = p.utilisation * (nodes_n * p.slots) as f64 / (service + 0.5 * cold);
    let mut events = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: f64, e: Event| {
        seq += 1;
        events.push(Reverse((Time(t), seq, e)));
    };
    push(&mut events, 0.0, Event::Arrival);
    let total = p.warmup + p.requests;
    if fail && nodes_n > 1 {
        // Halfway through the measured requests, in expected time.
        let at = (p.warmup + p.requests / 2) as f64 / rate;
        push(&mut events, at, Event::Fail);
    }
    let (mut sent, mut warm, mut colds, mut measured) = (0usize, 0usize, 0usize, 0usize);
    let (mut failed_at, mut warm_after, mut after) = (None::<f64>, 0usize, 0usize);
    let mut lost = 0;
    let mut waits: Vec<f64> = Vec::with_capacity(p.requests);
    let (mut start_time, mut end_time) = (0.0, 0.0);
    let mut burst = false;
    let mut next_phase = 0.0;
    // Starts request `f` on `n` now: warm or cold, and schedules its end.
    let start = |nodes: &mut Vec<Node>, n: usize, f: usize| -> bool {
        let node = &mut nodes[n];
        node.busy += 1;
        let warm = match node.idle.get_mut(&f).and_then(Vec::pop) {
            Some(_) => {
                node.idle_count -= 1;
                true
            }
            None => {
                // A new instance; the least recently used idle one makes way.
                if node.idle_count + node.busy_instances >= p.instances
                    && let Some((&victim, _)) = node
                        .idle
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .min_by(|a, b| a.1[0].total_cmp(&b.1[0]))
                {
                    if let Some(list) = node.idle.get_mut(&victim) {
                        list.remove(0);
                    }
                    node.idle_count -= 1;
                }
                false
            }
        };
        node.busy_instances += 1;
        warm
    };
    while let Some(Reverse((Time(now), _, event))) = events.pop() {
        match event {
            Event::Fail => {
                let node = &mut nodes[0];
                node.alive = false;
                lost += node.busy + node.queue.len();
                node.busy = 0;
                node.queue.clear();
                node.idle.clear();
                node.idle_count = 0;
                node.busy_instances = 0;
                failed_at = Some(now);
            }
            Event::Arrival => {
                if sent >= total {
                    continue;
                }
                sent += 1;
                if now >= next_phase {
                    burst = rng.unit() < p.burst_share;
                    next_phase = now + 0.05;
                }
                let r = if burst {
                    rate * p.burst_factor
                } else {
                    rate * (1.0 - p.burst_share * p.burst_factor) / (1.0 - p.burst_share)
                };
                push(
                    &mut events,
                    now + rng.exp(1.0 / r.max(rate * 0.05)),
                    Event::Arrival,
                );
                let u = rng.unit();
                let f = cdf.partition_point(|&c| c < u).min(p.functions - 1);
                let live = nodes.iter().enumerate().filter(|(_, n)| n.alive);
                let target = match policy {
                    Policy::Rendezvous => {
                        let names: Vec<&str> = live.map(|(_, n)| n.name.as_str()).collect();
                        let by_name = |name: &str| index.get(name).copied().unwrap_or_default();
                        let chosen = ring::place(&keys[f], names.iter().copied(), |name| {
                            nodes[by_name(name)].busy < p.slots
                        });
                        chosen.map_or(0, by_name)
                    }
                    Policy::Random => {
                        let alive: Vec<usize> = live.map(|(i, _)| i).collect();
                        alive[rng.below(alive.len())]
                    }
                    Policy::LeastLoaded => live
                        .min_by_key(|(_, n)| (n.busy + n.queue.len(), 0))
                        .map_or(0, |(i, _)| i),
                };
                let measuring = sent > p.warmup;
                if measuring && measured == 0 {
                    start_time = now;
                }
                if nodes[target].busy < p.slots {
                    let was_warm = start(&mut nodes, target, f);
                    let t = rng.exp(service) + if was_warm { 0.0 } else { cold };
                    push(&mut events, now + t, Event::Done { node: target, f });
                    if measuring {
                        measured += 1;
                        waits.push(0.0);
                        warm += usize::from(was_warm);
                        colds += usize::from(!was_warm);
                        if failed_at.is_some() {
                            after += 1;
                            warm_after += usize::from(was_warm);
                        }
                    }
                } else {
                    nodes[target]
                        .queue
                        .push_back((f, if measuring { now } else { -1.0 }));
                }
            }
            Event::Done { node: n, f } => {
                if !nodes[n].alive {
                    continue;
                }
                end_time = now;
                {
                    let node = &mut nodes[n];
                    node.busy -= 1;
                    node.busy_instances -= 1;
                    node.idle.entry(f).or_default().push(now);
                    node.idle_count += 1;
                }
                if let Some((qf, arrived)) = nodes[n].queue.pop_front() {
                    let was_warm = start(&mut nodes, n, qf);
                    let t = rng.exp(service) + if was_warm { 0.0 } else { cold };
                    push(&mut events, now + t, Event::Done { node: n, f: qf });
                    if arrived >= 0.0 {
                        measured += 1;
                        waits.push(now - arrived);
                        warm += usize::from(was_warm);
                        colds += usize::from(!was_warm);
                        if failed_at.is_some() {
                            after += 1;
                            warm_after += usize::from(was_warm);
                        }
                    }
                }
            }
        }
    }
    waits.sort_by(f64::total_cmp);
    let p99 = waits
        .get((waits.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or_default();
    Outcome {
        warm_rate: warm as f64 / measured.max(1) as f64,
        cold_per_s: colds as f64 / (end_time - start_time).max(1e-9),
        p99_wait_ms: p99 * 1000.0,
        lost,
        warm_after: warm_after as f64 / after.max(1) as f64,
    }
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let p = Params {
        functions: arg(&args, "--functions", 10_000),
        zipf: arg(&args, "--zipf", 1.0),
        requests: arg(&args, "--requests", 400_000),
        warmup: arg(&args, "--warmup", 100_000),
        slots: arg(&args, "--slots", 16),
        instances: arg(&args, "--instances", 256),
        service_ms: arg(&args, "--service-ms", 10.0),
        cold_ms: arg(&args, "--cold-ms", 25.0),
        utilisation: arg(&args, "--utilisation", 0.6),
        burst_factor: arg(&args, "--burst-factor", 3.0),
        burst_share: arg(&args, "--burst-share", 0.1),
        seed: arg(&args, "--seed", 1),
    };
    let svg: Option<String> = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned());
    let sizes: Vec<usize> = vec![1, 2, 4, 8, 16, 32, 64, 128, 256];
    let policies = [Policy::Rendezvous, Policy::Random, Policy::LeastLoaded];
    let cdf = zipf_cdf(p.functions.max(1), p.zipf);
    println!(
        "{} functions (Zipf s={}), {} requests after {} of warm-up, {} slots and {} instances a node, service {} ms, cold start {} ms, {:.0} % busy, bursts ×{} {:.0} % of the time",
        p.functions,
        p.zipf,
        p.requests,
        p.warmup,
        p.slots,
        p.instances,
        p.service_ms,
        p.cold_ms,
        p.utilisation * 100.0,
        p.burst_factor,
        p.burst_share * 100.0
    );
    println!(
        "| nodes | policy | warm hits | cold starts/s | p99 wait ms | one node fails: warm hits after | requests lost |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut series: Vec<(Policy, Vec<(usize, f64)>)> =
        policies.iter().map(|&p| (p, Vec::new())).collect();
    for &n in &sizes {
        for (i, &policy) in policies.iter().enumerate() {
            let steady = simulate(p, n, policy, false, &cdf);
            let failing = if n > 1 {
                Some(simulate(p, n, policy, true, &cdf))
            } else {
                None
            };
            series[i].1.push((n, steady.warm_rate * 100.0));
            println!(
                "| {n} | {} | {:.1} % | {:.0} | {:.2} | {} | {} |",
                policy.name(),
                steady.warm_rate * 100.0,
                steady.cold_per_s,
                steady.p99_wait_ms,
                failing.map_or("-".into(), |f| format!("{:.1} %", f.warm_after * 100.0)),
                failing.map_or("-".into(), |f| f.lost.to_string()),
            );
        }
    }
    if let Some(path) = svg
        && let Err(e) = plot(&path, &series, p.functions)
    {
        eprintln!("sim: drawing {path}: {e}");
        std::process::exit(1);
    }
}

fn plot(
    path: &str,
    series: &[(Policy, Vec<(usize, f64)>)],
    functions: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("warm-hit rate by routing, {functions} functions"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((1f64..256f64).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc("warm hits (%)")
        .draw()?;
    let colors = [BLUE, RED, GREEN];
    for ((policy, points), color) in series.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(n, w)| (n as f64, w)),
                color.stroke_width(2),
            ))?
            .label(policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
