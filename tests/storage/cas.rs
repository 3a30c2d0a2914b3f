//! FindMissingBlobs, the batch calls, malformed digests, GetTree and wrong instance names.
use super::*;

#[tokio::test]
async fn find_missing_blobs_reports_only_absent_blobs_and_never_the_empty_blob() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let present = put(&mut c, "", &[b"present blob"]).await.remove(0);
    let absent = digest(b"absent blob");
    let empty = digest(b"");
    let missing = find_missing(&mut c, "", &[present.clone(), absent.clone(), empty.clone()]).await;
    assert_eq!(missing, vec![absent.clone()]);
    // The empty blob is readable without ever being uploaded.
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![empty.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
    assert!(r.responses[0].data.is_empty());
    assert_eq!(bs_read(&mut c, &common::read_resource("", &empty), 0, 0).await.unwrap(), Vec::<u8>::new());
    // Nothing asked → nothing missing.
    assert!(find_missing(&mut c, "", &[]).await.is_empty());
}

#[tokio::test]
async fn batch_update_rejects_only_the_mismatched_blob() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let good: &[u8] = b"good data";
    let lying = digest(b"what the digest claims");
    let wrong_size = Digest { hash: digest(b"short").hash, size_bytes: 99 };
    let resp = c
        .cas
        .batch_update_blobs(batch_update_request(
            "",
            &[
                (digest(good), Bytes::from_static(good)),
                (lying.clone(), Bytes::from_static(b"other data of any length")),
                (wrong_size.clone(), Bytes::from_static(b"short")),
            ],
        ))
        .await
        .expect("the batch as a whole succeeds")
        .into_inner();
    assert_eq!(resp.responses.len(), 3);
    let code_of = |d: &Digest| resp.responses.iter().find(|r| r.digest.as_ref() == Some(d)).unwrap().status.clone();
    assert_eq!(code_of(&digest(good)).unwrap().code, 0);
    assert_eq!(code_of(&lying).unwrap().code, Code::InvalidArgument as i32);
    assert_eq!(code_of(&wrong_size).unwrap().code, Code::InvalidArgument as i32);
    // The good blob landed; the rejected ones did not.
    let missing = find_missing(&mut c, "", &[digest(good), lying.clone(), wrong_size.clone()]).await;
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(!missing.contains(&digest(good)));
}

#[tokio::test]
async fn batch_read_returns_data_and_per_blob_not_found() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let data: &[u8] = b"some stored bytes";
    let d = put(&mut c, "", &[data]).await.remove(0);
    let gone = digest(b"never uploaded");
    let resp = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![d.clone(), gone.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses.len(), 2);
    for r in &resp.responses {
        if r.digest.as_ref() == Some(&d) {
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            assert_eq!(&r.data[..], data);
        } else {
            assert_eq!(r.digest.as_ref(), Some(&gone));
            assert_eq!(r.status.as_ref().unwrap().code, Code::NotFound as i32);
            assert!(r.data.is_empty());
        }
    }
}

#[tokio::test]
async fn batches_over_the_size_limit_are_refused() {
    let server = TestServer::start(
        &ServerConfig::memory().cache_only().capabilities("max_batch_total_size_bytes = 2048").toml(),
    );
    let mut c = clients(&server).await;
    let a = pseudo_random(1000, 1);
    let b = pseudo_random(1000, 2);
    let big = pseudo_random(1100, 3);
    // Just under the limit works (the limit is the cause below, not the blobs).
    put(&mut c, "", &[&a, &b]).await;
    put(&mut c, "", &[&big]).await;
    let r = c
        .cas
        .batch_update_blobs(batch_update_request(
            "",
            &[(digest(&a), a.clone().into()), (digest(&big), big.clone().into())],
        ))
        .await;
    assert_code(r, Code::InvalidArgument, "update over the limit");
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![digest(&a), digest(&big)], ..Default::default() })
        .await;
    assert_code(r, Code::InvalidArgument, "read over the limit");
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![digest(&a), digest(&b)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.responses.iter().all(|r| r.status.as_ref().unwrap().code == 0));
}

#[tokio::test]
async fn malformed_digests_are_invalid_argument() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let good = digest(b"x");
    let bad_hex = Digest { hash: "z".repeat(64), size_bytes: 1 };
    let short = Digest { hash: good.hash[..63].to_string(), size_bytes: 1 };
    let negative = Digest { hash: good.hash.clone(), size_bytes: -1 };
    for bad in [&bad_hex, &short, &negative] {
        let r = c
            .cas
            .find_missing_blobs(FindMissingBlobsRequest { blob_digests: vec![bad.clone()], ..Default::default() })
            .await;
        assert_code(r, Code::InvalidArgument, &format!("FindMissingBlobs {bad:?}"));
        let r = c
            .cas
            .batch_read_blobs(BatchReadBlobsRequest { digests: vec![good.clone(), bad.clone()], ..Default::default() })
            .await;
        assert_code(r, Code::InvalidArgument, &format!("BatchReadBlobs {bad:?}"));
        // Either the whole batch or that one blob is refused.
        match c.cas.batch_update_blobs(batch_update_request("", &[(bad.clone(), Bytes::from_static(b"x"))])).await {
            Ok(r) => {
                assert_eq!(r.into_inner().responses[0].status.as_ref().unwrap().code, Code::InvalidArgument as i32)
            }
            Err(s) => assert_eq!(s.code(), Code::InvalidArgument),
        }
        let r =
            c.cas.get_tree(GetTreeRequest { root_digest: Some(bad.clone()), ..Default::default() }).await.map(|_| ());
        assert_code(r, Code::InvalidArgument, &format!("GetTree {bad:?}"));
        assert_code(get_result(&mut c, "", bad).await, Code::InvalidArgument, &format!("GetActionResult {bad:?}"));
        let r = bs_read(&mut c, &format!("blobs/{}/{}", bad.hash, bad.size_bytes), 0, 0).await;
        assert_code(r, Code::InvalidArgument, &format!("ByteStream.Read {bad:?}"));
    }
    let r = c.ac.get_action_result(GetActionResultRequest::default()).await;
    assert_code(r, Code::InvalidArgument, "GetActionResult without a digest");
    let names = [
        "nonsense".to_string(),
        "blobs/abc".to_string(),
        format!("blobs/{}/ten", good.hash),
        format!("uploads/u/blobs/{}/1", good.hash),
        format!("blobs/md5/{}/1", good.hash),
    ];
    for name in &names {
        assert_code(bs_read(&mut c, name, 0, 0).await, Code::InvalidArgument, name);
    }
}

/// root → {left, right}; left → {l1, l2}; right → {r1}: three levels, six directories.
fn tree_fixture() -> (Digest, Vec<(Digest, Vec<u8>)>) {
    let leaf = |name: &str| Directory {
        files: vec![FileNode {
            name: format!("{name}.txt"),
            digest: Some(digest(name.as_bytes())),
            is_executable: false,
            node_properties: None,
        }],
        ..Default::default()
    };
    let node =
        |name: &str, d: &Directory| DirectoryNode { name: name.into(), digest: Some(digest(&d.encode_to_vec())) };
    let (l1, l2, r1) = (leaf("l1"), leaf("l2"), leaf("r1"));
    let left = Directory { directories: vec![node("l1", &l1), node("l2", &l2)], ..Default::default() };
    let right = Directory { directories: vec![node("r1", &r1)], ..leaf("right") };
    let root = Directory { directories: vec![node("left", &left), node("right", &right)], ..Default::default() };
    let all: Vec<Vec<u8>> = [&root, &left, &right, &l1, &l2, &r1].iter().map(|d| d.encode_to_vec()).collect();
    (digest(&all[0]), all.into_iter().map(|b| (digest(&b), b)).collect())
}

async fn get_tree_page(
    c: &mut Clients,
    root: &Digest,
    page_size: i32,
    token: &str,
) -> Result<Vec<(Vec<Directory>, String)>, Status> {
    let mut s = c
        .cas
        .get_tree(GetTreeRequest {
            instance_name: String::new(),
            root_digest: Some(root.clone()),
            page_size,
            page_token: token.into(),
            digest_function: 0,
        })
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(p) = s.message().await? {
        pages.push((p.directories, p.next_page_token));
    }
    Ok(pages)
}

#[tokio::test]
async fn get_tree_returns_every_level_and_pages() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let (root, dirs) = tree_fixture();
    let blobs: Vec<&[u8]> = dirs.iter().map(|(_, b)| b.as_slice()).collect();
    put(&mut c, "", &blobs).await;
    let mut expected: Vec<Vec<u8>> = dirs.iter().map(|(_, b)| b.clone()).collect();
    expected.sort();

    // Unpaged: everything, root first.
    let pages = get_tree_page(&mut c, &root, 0, "").await.unwrap();
    let all: Vec<Directory> = pages.iter().flat_map(|p| p.0.clone()).collect();
    assert_eq!(all[0].encode_to_vec(), dirs[0].1, "root comes first");
    let mut got: Vec<Vec<u8>> = all.iter().map(|d| d.encode_to_vec()).collect();
    got.sort();
    assert_eq!(got, expected);
    assert!(pages.last().unwrap().1.is_empty(), "last page has no token");

    // Paged by 4: two calls (4 + 2), following the token.
    let first = get_tree_page(&mut c, &root, 4, "").await.unwrap();
    assert_eq!(first.len(), 1, "one page per call when paging");
    assert_eq!(first[0].0.len(), 4);
    assert!(!first[0].1.is_empty(), "a next_page_token after a full page");
    let second = get_tree_page(&mut c, &root, 4, &first[0].1).await.unwrap();
    assert_eq!(second[0].0.len(), 2);
    assert!(second[0].1.is_empty());
    let mut got: Vec<Vec<u8>> = first[0].0.iter().chain(&second[0].0).map(|d| d.encode_to_vec()).collect();
    got.sort();
    assert_eq!(got, expected, "pages together are the whole tree, without repeats");

    // Paged by 1: six pages.
    let mut token = String::new();
    let mut n = 0;
    loop {
        let p = get_tree_page(&mut c, &root, 1, &token).await.unwrap().remove(0);
        n += p.0.len();
        token = p.1;
        if token.is_empty() {
            break;
        }
        assert!(n < 10, "paging does not end");
    }
    assert_eq!(n, 6);

    let r = get_tree_page(&mut c, &root, 2, "not-a-token").await;
    assert_code(r, Code::InvalidArgument, "bad page token");
    let r = get_tree_page(&mut c, &digest(b"no such directory"), 0, "").await;
    assert_code(r, Code::NotFound, "missing root");
}

#[tokio::test]
async fn wrong_instance_name_is_refused_naming_both() {
    let server = TestServer::start(&ServerConfig::memory().instance("main").cache_only().toml());
    let mut c = clients(&server).await;
    let d = put(&mut c, "main", &[b"in main"]).await.remove(0);
    let check = |what: &str, s: Status| {
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains("other") && s.message().contains("main"), "{what}: {}", s.message());
    };
    let r = c
        .cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: "other".into(),
            blob_digests: vec![d.clone()],
            digest_function: 0,
        })
        .await;
    check("FindMissingBlobs", r.unwrap_err());
    check(
        "BatchUpdateBlobs",
        c.cas
            .batch_update_blobs(batch_update_request("other", &[(d.clone(), Bytes::from_static(b"in main"))]))
            .await
            .unwrap_err(),
    );
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: "other".into(),
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await;
    check("BatchReadBlobs", r.unwrap_err());
    let r = c
        .cas
        .get_tree(GetTreeRequest { instance_name: "other".into(), root_digest: Some(d.clone()), ..Default::default() })
        .await;
    check("GetTree", r.map(|_| ()).unwrap_err());
    check("ByteStream.Read", bs_read(&mut c, &common::read_resource("other", &d), 0, 0).await.unwrap_err());
    check(
        "ByteStream.Write",
        bs_write(&mut c, &common::upload_resource("other", &d), b"in main", 0, 100).await.unwrap_err(),
    );
    let r =
        c.bs.query_write_status(QueryWriteStatusRequest { resource_name: common::upload_resource("other", &d) }).await;
    check("QueryWriteStatus", r.unwrap_err());
    check("GetActionResult", get_result(&mut c, "other", &d).await.unwrap_err());
    check("UpdateActionResult", update_result(&mut c, "other", &d, ActionResult::default()).await.unwrap_err());
    let r = c.caps.get_capabilities(GetCapabilitiesRequest { instance_name: "other".into() }).await;
    check("GetCapabilities", r.unwrap_err());
    // The empty (default) instance is another name too.
    let s = c.cas.find_missing_blobs(FindMissingBlobsRequest::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("''") && s.message().contains("main"), "{}", s.message());

    // The right name works everywhere.
    assert!(find_missing(&mut c, "main", std::slice::from_ref(&d)).await.is_empty());
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &d), 0, 0).await.unwrap(), b"in main");
    c.caps.get_capabilities(GetCapabilitiesRequest { instance_name: "main".into() }).await.unwrap();
}
