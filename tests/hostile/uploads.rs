//! ByteStream uploads whose data disagrees with what they claim.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_offset_jumps_extra_bytes_or_a_short_finish_are_refused() {
    let server = server();
    let ch = server.channel().await;
    let data = common::pseudo_random(10_000, 5);
    let d = digest(&data);
    let name = || common::upload_resource("", &d);
    let jump = write(&ch, &name(), &[(&data[..4000], 0, false), (&data[5000..], 5000, true)]).await;
    refused(jump, Code::InvalidArgument, &["write_offset"], "an offset jump");
    let mut extra = data.clone();
    extra.extend_from_slice(b"tail");
    refused(write(&ch, &name(), &[(&extra, 0, true)]).await, Code::InvalidArgument, &["more data"], "extra bytes");
    let short = write(&ch, &name(), &[(&data[..9000], 0, true)]).await;
    refused(short, Code::InvalidArgument, &["finish_write after 9000 bytes"], "a short finish_write");
    let wrong = write(&ch, &name(), &[(&common::pseudo_random(10_000, 6), 0, true)]).await;
    refused(wrong, Code::InvalidArgument, &["does not match its digest"], "other bytes");
    // None of them left the blob stored, and a correct upload still works.
    let missing = cas(&ch)
        .find_missing_blobs(re_proto::reapi::FindMissingBlobsRequest {
            blob_digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![d.clone()]);
    assert_eq!(write(&ch, &name(), &[(&data, 0, true)]).await.unwrap(), data.len() as i64);
}
