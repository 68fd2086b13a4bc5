//! Wave chunks: cut by device count and by bytes, whichever comes first, so that every
//! `WaveStarted` and `DevicesJoined` fits a Kafka record.

use super::*;

fn targets(n: usize, id_len: usize, version_len: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            device_id: format!("{i:0id_len$}"),
            firmware_version: "9".repeat(version_len),
        })
        .collect()
}

fn sizes(chunks: &[&[Target]]) -> Vec<usize> {
    chunks.iter().map(|c| c.len()).collect()
}

#[test]
fn short_ids_are_cut_by_count() {
    assert!(wave_chunks(&[]).is_empty());
    assert_eq!(sizes(&wave_chunks(&targets(1, 8, 5))), [1]);
    assert_eq!(
        sizes(&wave_chunks(&targets(WAVE_CHUNK, 8, 5))),
        [WAVE_CHUNK]
    );
    assert_eq!(
        sizes(&wave_chunks(&targets(WAVE_CHUNK + 1, 8, 5))),
        [WAVE_CHUNK, 1]
    );
    assert_eq!(
        sizes(&wave_chunks(&targets(2 * WAVE_CHUNK, 8, 5))),
        [WAVE_CHUNK, WAVE_CHUNK]
    );
}

#[test]
fn long_ids_are_cut_by_bytes_and_every_chunk_fits_the_budget() {
    // 128-character ids and versions: 260 bytes a device, 2,016 devices a chunk.
    let all = targets(WAVE_CHUNK, 128, 128);
    let chunks = wave_chunks(&all);
    let per_chunk = WAVE_CHUNK_BYTES / 260;
    assert_eq!(chunks[0].len(), per_chunk);
    assert_eq!(sizes(&chunks).iter().sum::<usize>(), WAVE_CHUNK);
    for c in &chunks {
        let bytes: usize = c
            .iter()
            .map(|t| t.device_id.len() + t.firmware_version.len() + 4)
            .sum();
        assert!(bytes <= WAVE_CHUNK_BYTES, "{bytes}");
    }
    // In order, nothing lost or repeated.
    let joined: Vec<&Target> = chunks.iter().flat_map(|c| c.iter()).collect();
    assert!(joined.iter().zip(all.iter()).all(|(a, b)| *a == b));
}

#[test]
fn a_chunk_exactly_at_the_budget_is_not_cut() {
    // Eight devices of exactly an eighth of the budget each: one chunk; one byte more: two.
    assert_eq!(WAVE_CHUNK_BYTES % 8, 0);
    let each = WAVE_CHUNK_BYTES / 8;
    let exact: Vec<Target> = (0..8)
        .map(|i| Target {
            device_id: format!("{i}"),
            firmware_version: "v".repeat(each - 4 - 1),
        })
        .collect();
    assert_eq!(sizes(&wave_chunks(&exact)), [8]);
    let mut over = exact;
    over[7].firmware_version.push('v');
    assert_eq!(sizes(&wave_chunks(&over)), [7, 1]);
}

#[test]
fn a_target_larger_than_the_budget_is_a_chunk_of_its_own() {
    let huge = Target {
        device_id: "big".into(),
        firmware_version: "x".repeat(WAVE_CHUNK_BYTES),
    };
    let small = targets(2, 4, 4);
    let all = vec![small[0].clone(), huge.clone(), small[1].clone()];
    assert_eq!(sizes(&wave_chunks(&all)), [1, 1, 1]);
    // First, it is still a chunk of its own: no empty chunk before it.
    let first = vec![huge, small[0].clone()];
    assert_eq!(sizes(&wave_chunks(&first)), [1, 1]);
}
