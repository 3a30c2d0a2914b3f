//! ActionCache: round trips, inlined outputs and updates switched off.
use super::*;

#[tokio::test]
async fn action_cache_round_trip_and_inlining() {
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
    let mut c = clients(&server).await;
    let action = digest(b"action 1");
    assert_code(get_result(&mut c, "", &action).await, Code::NotFound, "miss");

    let (out_a, out_b, stdout, stderr) =
        (b"output a".to_vec(), b"output b".to_vec(), b"hello stdout\n".to_vec(), b"err\n".to_vec());
    put(&mut c, "", &[&out_a, &out_b, &stdout, &stderr]).await;
    let result = ActionResult {
        output_files: vec![
            OutputFile {
                path: "out/a".into(),
                digest: Some(digest(&out_a)),
                is_executable: true,
                ..Default::default()
            },
            OutputFile { path: "out/b".into(), digest: Some(digest(&out_b)), ..Default::default() },
        ],
        exit_code: 3,
        stdout_digest: Some(digest(&stdout)),
        stderr_digest: Some(digest(&stderr)),
        ..Default::default()
    };
    update_result(&mut c, "", &action, result.clone()).await.expect("UpdateActionResult");
    let got = get_result(&mut c, "", &action).await.expect("hit");
    assert_eq!(got, result, "plain get returns what was stored, nothing inlined");
    assert_code(get_result(&mut c, "", &digest(b"action 2")).await, Code::NotFound, "other action");

    let got =
        c.ac.get_action_result(GetActionResultRequest {
            action_digest: Some(action.clone()),
            inline_stdout: true,
            inline_output_files: vec!["out/b".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.stdout_raw[..], &stdout[..]);
    assert!(got.stderr_raw.is_empty(), "stderr was not asked for");
    assert!(got.output_files[0].contents.is_empty(), "out/a was not asked for");
    assert_eq!(&got.output_files[1].contents[..], &out_b[..]);
    assert_eq!(got.exit_code, 3);

    // Overwrite.
    let newer = ActionResult { exit_code: 0, ..result };
    update_result(&mut c, "", &action, newer.clone()).await.unwrap();
    assert_eq!(get_result(&mut c, "", &action).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn action_cache_updates_can_be_disabled() {
    let server = TestServer::start(
        &ServerConfig::memory().cache_only().capabilities("action_cache_update_enabled = false").toml(),
    );
    let mut c = clients(&server).await;
    let r = update_result(&mut c, "", &digest(b"a"), ActionResult::default()).await;
    assert_code(r, Code::PermissionDenied, "update while disabled");
    assert_code(get_result(&mut c, "", &digest(b"a")).await, Code::NotFound, "nothing stored");
    let caps = c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    assert!(!caps.cache_capabilities.unwrap().action_cache_update_capabilities.unwrap().update_enabled);
}
