//! What authenticating a record costs (docs/trust.md, section 8): signing and verifying the
//! `hitl-auth` header of records of typical sizes, HMAC-SHA256 and Ed25519.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hitl_runtime::auth::{Algorithm, Grant, KeySet, Kind, Signer};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    // A decision or review request (~700 B), a lifecycle event (~900 B), a verdict (~250 B).
    for size in [250usize, 700, 900] {
        let value = vec![b'x'; size];
        let key = b"payments-fraud-0001";
        group.throughput(Throughput::Bytes(size as u64));
        for algorithm in [Algorithm::HmacSha256, Algorithm::Ed25519] {
            let signer = Signer::new("k1", algorithm, &[7u8; 32]).unwrap();
            let mut keys = KeySet::default();
            match algorithm {
                Algorithm::HmacSha256 => keys.insert_hmac("k1", &[7u8; 32], Grant::Gateway),
                Algorithm::Ed25519 => keys.insert_ed25519(
                    "k1",
                    &hex::decode(signer.public_key_hex().unwrap()).unwrap(),
                    Grant::Gateway,
                ),
            }
            .unwrap();
            let header = signer.sign(Kind::Verdict, Some(key), Some(&value));
            group.bench_with_input(
                BenchmarkId::new(format!("sign/{}", algorithm.as_str()), size),
                &value,
                |b, value| b.iter(|| signer.sign(Kind::Verdict, Some(key), Some(value))),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("verify/{}", algorithm.as_str()), size),
                &value,
                |b, value| {
                    b.iter(|| {
                        keys.verify(
                            Kind::Verdict,
                            Some(key),
                            Some(value),
                            Some(header.as_bytes()),
                        )
                        .unwrap()
                        .key_id
                        .len()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
