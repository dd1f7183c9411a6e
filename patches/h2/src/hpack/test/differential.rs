//! PATCH (tokengate): a differential test of the patched HPACK encoding
//! (`Encoder::encode_block`, with the memo of PATCH.md sections 9 and 13)
//! against h2's own encoder and table as released, kept unchanged in
//! `unpatched/` (h2 0.4.19's `src/hpack/{encoder,table}.rs`, identical to
//! 0.4.20's but for tokengate's patches): byte for byte, and decoded by a
//! fresh `hpack::Decoder` to the same header list. Random frames (requests,
//! responses, CONNECT with `:protocol`), table-size updates (including to 0,
//! and two or three before one block), sensitive values, repeated names,
//! huge values and a changing `date`. Written by the independent review of
//! section 13: it fails when the memo survives a resize to 0, which the
//! other tests did not notice.
use super::*;
use crate::hpack::{Decoder, Encoder};
// What the unpatched files import through `super::`.
use crate::hpack::{huffman, Header};
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Cursor;
use std::ops::ControlFlow;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "unpatched/table.rs"]
mod table;
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "unpatched/encoder.rs"]
mod encoder;

fn flat(h: &Header<Option<HeaderName>>, last: &mut Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    match h {
        Header::Field { name: Some(n), value } => {
            *last = n.as_str().as_bytes().to_vec();
            (last.clone(), value.as_bytes().to_vec())
        }
        Header::Field { name: None, value } => (last.clone(), value.as_bytes().to_vec()),
        Header::Method(m) => (b":method".to_vec(), m.as_str().as_bytes().to_vec()),
        Header::Scheme(v) => (b":scheme".to_vec(), v.as_str().as_bytes().to_vec()),
        Header::Authority(v) => (b":authority".to_vec(), v.as_str().as_bytes().to_vec()),
        Header::Path(v) => (b":path".to_vec(), v.as_str().as_bytes().to_vec()),
        Header::Protocol(v) => (b":protocol".to_vec(), v.as_str().as_bytes().to_vec()),
        Header::Status(s) => (b":status".to_vec(), s.as_str().as_bytes().to_vec()),
    }
}

fn gen_pseudo(seed: u64) -> Pseudo {
    let mut rng = StdRng::seed_from_u64(seed);
    match rng.gen_range(0..4) {
        0 => Pseudo::response(
            [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::NO_CONTENT, StatusCode::from_u16(299).unwrap()]
                [rng.gen_range(0..4)],
        ),
        1 => Pseudo::request(
            Method::CONNECT,
            Uri::from_static("https://example.com/chat"),
            Some(crate::ext::Protocol::from_static("websocket")),
        ),
        _ => {
            let uris = [
                "https://example.com/a/b?c",
                "http://example.com/",
                "https://other.example.org:8443/a/very/long/path/that/is/past/twenty/bytes?q=1",
            ];
            let mut p = Pseudo::request(
                [Method::GET, Method::POST, Method::PATCH][rng.gen_range(0..3)].clone(),
                Uri::from_static(uris[rng.gen_range(0..uris.len())]),
                None,
            );
            if rng.gen_bool(0.1) {
                p.path = None;
            }
            p
        }
    }
}

#[test]
fn encode_block_is_unpatched_h2_and_decodes() {
    let names = [
        "server", "date", "content-type", "x-custom", "set-cookie", "cookie",
        "content-length", "etag", "cache-control", "vary", "authorization",
        "accept-encoding", "x-a-rather-long-custom-header-name-for-testing",
        "location", "age",
    ];
    let mut total_blocks = 0u64;
    let mut memo_hits = 0u64;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let init = [4096usize, 4096, 256, 100, 64, 0][(seed % 6) as usize];
        let mut patched = Encoder::new(init, 0);
        let mut unpatched = encoder::Encoder::new(init, 0);
        // The decoder allows any size up to 4096 (SETTINGS_HEADER_TABLE_SIZE).
        let mut decoder = Decoder::new(4096);
        if init != 4096 {
            // The encoder starts below the decoder's limit: tell the decoder as
            // the encoder would (first block starts with an update).
            patched.update_max_size(init);
            unpatched.update_max_size(init);
            // Encoder::new(init) already has max init: the update is a no-op
            // for the table, but harmless.
        }
        let mut second = 0u64;
        for round in 0..2_000u64 {
            // Size updates, sometimes two or three before a block.
            if rng.gen_bool(0.03) {
                for _ in 0..rng.gen_range(1..=3) {
                    let size = match rng.gen_range(0..5) {
                        0 => 0,
                        1 => 4096,
                        _ => rng.gen_range(0..=4096),
                    };
                    patched.update_max_size(size);
                    unpatched.update_max_size(size);
                }
            }
            if rng.gen_bool(0.05) {
                second += 1;
            }
            let pseudo_seed = seed * 1_000_000 + round;
            let mut fields = HeaderMap::new();
            for _ in 0..rng.gen_range(0..9) {
                let name = names[rng.gen_range(0..names.len())];
                let value: Vec<u8> = match rng.gen_range(0..20) {
                    0 => vec![b'v'; rng.gen_range(100..200)],
                    1 => vec![b'w'; rng.gen_range(1000..5000)],
                    2 => (0..rng.gen_range(1..40)).map(|_| rng.gen_range(0x80..=0xffu8)).collect(),
                    3 | 4 | 5 => format!("Mon, 07 Dec 2026 13:00:{:02} GMT", second % 60).into_bytes(),
                    6 => b"gzip, deflate".to_vec(),
                    _ => ["a", "bb", "application/json", "nginx", "", "0123456789", "no-cache"]
                        [rng.gen_range(0..7)]
                        .as_bytes()
                        .to_vec(),
                };
                let mut value = HeaderValue::from_bytes(&value).unwrap();
                value.set_sensitive(rng.gen_bool(0.1));
                fields.append(HeaderName::from_static(name), value);
            }
            // Expected list (Iter order).
            let mut last = Vec::new();
            let want: Vec<(Vec<u8>, Vec<u8>)> = Iter {
                pseudo: Some(gen_pseudo(pseudo_seed)),
                fields: fields.clone().into_iter(),
            }
            .map(|h| flat(&h, &mut last))
            .collect();

            let mut want_bytes = BytesMut::new();
            unpatched.encode(
                Iter {
                    pseudo: Some(gen_pseudo(pseudo_seed)),
                    fields: fields.clone().into_iter(),
                },
                &mut want_bytes,
            );
            let mut got = BytesMut::new();
            memo_hits += patched.found_memo_len() as u64;
            patched.encode_block(gen_pseudo(pseudo_seed), fields, &mut got);
            assert_eq!(
                want_bytes, got,
                "seed {seed} round {round}: bytes differ from unpatched h2"
            );

            let mut decoded = Vec::new();
            let mut buf = got.clone();
            decoder
                .decode(&mut Cursor::new(&mut buf), |h| {
                    let n = h.name().as_slice().to_vec();
                    decoded.push((n, h.value_slice().to_vec()));
                    ControlFlow::Continue(())
                })
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: decode error {e:?}"));
            assert_eq!(want, decoded, "seed {seed} round {round}: decoded list differs");
            total_blocks += 1;
        }
    }
    eprintln!("differential: {total_blocks} blocks, memo entries seen before blocks: {memo_hits}");
    assert!(memo_hits > 1000);
}
