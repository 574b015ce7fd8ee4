//! The demo runs start to finish and tells the story it promises.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_plays_the_whole_conversation() {
    let mut out = Vec::new();
    demo::run(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    println!("{out}");
    assert!(
        out.contains("bot passes control to the human inbox → accepted"),
        "{out}"
    );
    assert!(
        out.contains("bot tries to talk over the human → REFUSED 10/2018300"),
        "{out}"
    );
    assert!(
        out.contains("human sends a plain reply → REFUSED 10/2018278"),
        "{out}"
    );
    assert!(out.contains("HUMAN_AGENT tag → accepted"), "{out}");
    assert!(out.contains("bot answers again → accepted"), "{out}");
    assert!(out.contains("control passed from 1001 to 1002"), "{out}");
    assert!(out.contains("refused with 10/2018278"), "{out}");
}
