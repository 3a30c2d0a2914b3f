//! What stays stored: eviction from a full memory CAS, blobs kept by being
//! asked for, the filesystem backend across a restart.
use super::*;

/// Uploads `n` distinct fillers of `size` bytes one at a time, calling `touch` after each.
async fn fill<F, Fut>(c: &mut Clients, n: usize, size: usize, seed: u64, mut touch: F)
where
    F: FnMut(Clients) -> Fut,
    Fut: std::future::Future<Output = Clients>,
{
    let mut owned = Clients {
        channel: c.channel.clone(),
        cas: c.cas.clone(),
        bs: c.bs.clone(),
        ac: c.ac.clone(),
        caps: c.caps.clone(),
    };
    for i in 0..n {
        let filler = pseudo_random(size, seed * 1000 + i as u64);
        put(&mut owned, "", &[&filler]).await;
        owned = touch(owned).await;
    }
}

#[tokio::test]
async fn cached_results_whose_blobs_were_evicted_are_misses() {
    // 64 KiB of memory CAS: 80 KiB of other blobs push out everything untouched.
    let server = TestServer::start(&ServerConfig::memory().cas("max_size_bytes = 65536").cache_only().toml());
    let mut c = clients(&server).await;
    let stdout = pseudo_random(1024, 1);
    let output = pseudo_random(1024, 2);
    let inner_file = pseudo_random(1024, 3);
    let tree = Tree {
        root: Some(Directory {
            files: vec![FileNode { name: "f".into(), digest: Some(digest(&inner_file)), ..Default::default() }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    put(&mut c, "", &[&stdout, &output, &inner_file, &tree]).await;
    let by_stdout = digest(b"action with stdout");
    let by_output = digest(b"action with an output file");
    let by_tree = digest(b"action with an output directory");
    let missing_from_start = digest(b"action whose output was never uploaded");
    update_result(&mut c, "", &by_stdout, ActionResult { stdout_digest: Some(digest(&stdout)), ..Default::default() })
        .await
        .unwrap();
    let with_file = |d: &[u8]| ActionResult {
        output_files: vec![OutputFile { path: "o".into(), digest: Some(digest(d)), ..Default::default() }],
        ..Default::default()
    };
    update_result(&mut c, "", &by_output, with_file(&output)).await.unwrap();
    update_result(
        &mut c,
        "",
        &by_tree,
        ActionResult {
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(digest(&tree)),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    update_result(&mut c, "", &missing_from_start, with_file(b"not in the CAS")).await.unwrap();
    for a in [&by_stdout, &by_output, &by_tree] {
        get_result(&mut c, "", a).await.expect("complete result is a hit");
    }
    assert_code(get_result(&mut c, "", &missing_from_start).await, Code::NotFound, "output never uploaded");

    // Keep the Tree blob fresh so only the file inside it goes.
    let tree_digest = digest(&tree);
    fill(&mut c, 10, 8192, 4, |mut c| {
        let t = tree_digest.clone();
        async move {
            assert!(find_missing(&mut c, "", &[t]).await.is_empty());
            c
        }
    })
    .await;
    let gone = find_missing(&mut c, "", &[digest(&stdout), digest(&output), digest(&inner_file), tree_digest]).await;
    assert_eq!(gone, vec![digest(&stdout), digest(&output), digest(&inner_file)], "eviction happened as planned");
    assert_code(get_result(&mut c, "", &by_stdout).await, Code::NotFound, "stdout evicted");
    assert_code(get_result(&mut c, "", &by_output).await, Code::NotFound, "output file evicted");
    assert_code(get_result(&mut c, "", &by_tree).await, Code::NotFound, "file inside an output tree evicted");
    // Re-uploading the blob makes the entry usable again.
    put(&mut c, "", &[&output]).await;
    get_result(&mut c, "", &by_output).await.expect("hit once the blob is back");
}

#[tokio::test]
async fn find_missing_and_get_action_result_keep_blobs_from_eviction() {
    let server = TestServer::start(&ServerConfig::memory().cas("max_size_bytes = 65536").cache_only().toml());
    let mut c = clients(&server).await;
    let touched = pseudo_random(8192, 21);
    let untouched = pseudo_random(8192, 22);
    let output = pseudo_random(8192, 23);
    let [touched_d, untouched_d, output_d]: [Digest; 3] =
        put(&mut c, "", &[&touched, &untouched, &output]).await.try_into().unwrap();
    let action = digest(b"cached action");
    update_result(
        &mut c,
        "",
        &action,
        ActionResult {
            output_files: vec![OutputFile { path: "o".into(), digest: Some(output_d.clone()), ..Default::default() }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // 10 × 8 KiB more than fills 64 KiB; after each, one blob is asked for
    // with FindMissingBlobs and the other through GetActionResult.
    fill(&mut c, 10, 8192, 5, |mut c| {
        let (t, a) = (touched_d.clone(), action.clone());
        async move {
            assert!(find_missing(&mut c, "", &[t]).await.is_empty(), "touched blob evicted");
            get_result(&mut c, "", &a).await.expect("cached result stays complete");
            c
        }
    })
    .await;
    let missing = find_missing(&mut c, "", &[touched_d.clone(), untouched_d.clone(), output_d.clone()]).await;
    assert_eq!(missing, vec![untouched_d], "only the blob nobody asked for is evicted");
    let back = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![touched_d], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&back.responses[0].data[..], &touched[..]);
}

#[tokio::test]
async fn filesystem_backend_survives_a_restart_and_discards_truncated_blobs() {
    let mut server = TestServer::start(&ServerConfig::filesystem().instance("main").cache_only().toml());
    let mut c = clients(&server).await;
    let small = put(&mut c, "main", &[b"small blob"]).await.remove(0);
    let large = pseudo_random(3 * MIB, 31);
    let large_d = digest(&large);
    bs_write(&mut c, &common::upload_resource("main", &large_d), &large, 0, MIB).await.unwrap();
    let action = digest(b"persisted action");
    let result = ActionResult {
        output_files: vec![OutputFile { path: "big".into(), digest: Some(large_d.clone()), ..Default::default() }],
        stdout_digest: Some(small.clone()),
        exit_code: 7,
        ..Default::default()
    };
    update_result(&mut c, "main", &action, result.clone()).await.unwrap();
    drop(c);

    server.stop();
    // Plant a blob cut short (as after a power loss) and a well-formed one.
    let cut = pseudo_random(1000, 32);
    let cut_d = digest(&cut);
    let planted = pseudo_random(1000, 33);
    let planted_d = digest(&planted);
    let data_dir = server.data_dir().to_path_buf();
    let blob_path =
        |d: &Digest| data_dir.join("cas/blobs").join(&d.hash[..2]).join(format!("{}-{}", d.hash, d.size_bytes));
    assert!(blob_path(&large_d).is_file(), "blobs are stored where expected: {}", blob_path(&large_d).display());
    std::fs::create_dir_all(blob_path(&cut_d).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&cut_d), &cut[..500]).unwrap();
    std::fs::create_dir_all(blob_path(&planted_d).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&planted_d), &planted).unwrap();

    server.restart();
    let mut c = clients(&server).await;
    let missing =
        find_missing(&mut c, "main", &[small.clone(), large_d.clone(), planted_d.clone(), cut_d.clone()]).await;
    assert_eq!(missing, vec![cut_d.clone()], "only the truncated blob is gone");
    assert!(!blob_path(&cut_d).exists(), "the truncated file was deleted at start");
    assert!(bs_read(&mut c, &common::read_resource("main", &large_d), 0, 0).await.unwrap() == large);
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &planted_d), 0, 0).await.unwrap(), planted);
    assert_code(bs_read(&mut c, &common::read_resource("main", &cut_d), 0, 0).await, Code::NotFound, "truncated");
    assert_eq!(get_result(&mut c, "main", &action).await.expect("AC entry persisted"), result);
    // The slot is usable again.
    put(&mut c, "main", &[&cut]).await;
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &cut_d), 0, 0).await.unwrap(), cut);
}
