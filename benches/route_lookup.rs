//! Route selection per request: host + longest path prefix over a compiled table.
//!
//! 3 routes (a typical sidecar) and 200 routes (a large shared front), for a hit on a
//! host-specific route, a deep path that falls back to `/`, and an unknown host.
//!
//! Last result (2-core EPYC VM, 2026-11-26): 6-28 ns with 3 routes, 27-295 ns with 200
//! routes; see README "Performance".

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use sessiongate::router::Router;
use sessiongate::Config;

fn config(routes: usize) -> Config {
    let mut text = String::from("[server]\nplain_listen = \"127.0.0.1:0\"\n");
    text.push_str("[[routes]]\nupstream = \"http://127.0.0.1:8000\"\n");
    for i in 1..routes {
        let host = if i % 2 == 0 {
            format!("host = \"h{i}.example\"\n")
        } else {
            String::new()
        };
        let _ = write!(
            text,
            "[[routes]]\n{host}path_prefix = \"/app{i}/section\"\nupstream = \"http://127.0.0.1:{}\"\n",
            8000 + i
        );
    }
    match Config::from_toml(&text, Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("bench config rejected: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [3usize, 200] {
        let cfg = config(n);
        let router = Router::new(&cfg.routes);
        let cases = [
            ("host_hit", Some("h2.example"), "/app2/section/page"),
            (
                "fallback_to_root",
                Some("www.example"),
                "/some/deep/path/that/matches/nothing",
            ),
            ("prefix_hit", None, "/app1/section/x"),
        ];
        for (name, host, path) in cases {
            group.bench_function(format!("{n}_routes/{name}"), |b| {
                b.iter(|| {
                    router
                        .route(black_box(host), black_box(path))
                        .map(|r| r.name.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
