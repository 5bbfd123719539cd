//! End-to-end: the real binaries on the committed FracAtlas sample.

use fv_e2e::{run, sample_dir};
use serde_json::Value;

/// `fv-train data check` on the sample, which holds out one non-fractured image each for
/// validation and test; exits 0.
fn check_sample(extra: &[&str]) -> fv_e2e::Run {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_dir();
    let mut args = vec![
        "data",
        "check",
        "--data",
        data.to_str().unwrap(),
        "--valid-non-fractured",
        "1",
        "--test-non-fractured",
        "1",
    ];
    args.extend_from_slice(extra);
    run("fv-train", &args, tmp.path()).expect_code(0)
}

#[test]
fn data_check_json_on_the_sample() {
    let r = check_sample(&["--json"]);
    let j: Value =
        serde_json::from_str(&r.stdout()).unwrap_or_else(|e| panic!("{e}\n{}", r.describe()));
    assert_eq!(j["images"]["fractured"], 6, "{}", r.describe());
    assert_eq!(j["images"]["non_fractured"], 6);
    assert_eq!(j["boxes"], 7);
    assert_eq!(j["detection_split"]["train"], 3);
    assert_eq!(j["detection_split"]["valid"], 1);
    assert_eq!(j["detection_split"]["test"], 2);
    for part in ["train", "valid", "test"] {
        assert!(j["classification_split"][part]["fractured"].is_u64());
        assert!(j["classification_split"][part]["non_fractured"].is_u64());
    }
    assert_eq!(
        j["problems"]["truncated"],
        serde_json::json!(["IMG0004092.jpg"])
    );
    assert_eq!(
        j["problems"]["label_conflicts"],
        serde_json::json!(["IMG0003298.jpg"])
    );
    assert!(j["problems"]["exif_rotated"]
        .as_array()
        .unwrap()
        .contains(&Value::from("IMG0002628.jpg")));
    assert_eq!(j["problems"]["cross_split_duplicates"], 0);
}

#[test]
fn data_check_table_names_the_flaws() {
    let r = check_sample(&[]);
    let out = r.stdout();
    assert!(
        out.contains("truncated (1, excluded): IMG0004092.jpg"),
        "{}",
        r.describe()
    );
    assert!(
        out.contains("label conflict: IMG0003298.jpg"),
        "{}",
        r.describe()
    );
}

#[test]
fn data_check_on_a_wrong_folder_exits_2_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        "fv-train",
        &["data", "check", "--data", "no-such-dir"],
        tmp.path(),
    )
    .expect_code(2);
    let err = r.stderr();
    assert!(
        err.contains("no-such-dir") && err.contains("published layout"),
        "{}",
        r.describe()
    );
}

/// The full dataset, when the environment points at it (CI does, with FV_FRACATLAS).
#[test]
fn data_check_on_the_full_dataset() {
    let Some(data) = std::env::var_os("FV_FRACATLAS") else {
        fv_e2e::missing(
            "DATA",
            "FV_FRACATLAS does not point at the dataset: no full-dataset check",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        "fv-train",
        &["data", "check", "--json", "--data", data.to_str().unwrap()],
        tmp.path(),
    )
    .expect_code(0);
    let j: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(j["images"]["fractured"], 717);
    assert_eq!(j["boxes"], 922);
    assert_eq!(
        j["detection_split"],
        serde_json::json!({"train": 574, "valid": 82, "test": 61})
    );
    assert_eq!(j["classification_split"]["valid"]["non_fractured"], 163);
    assert_eq!(j["classification_split"]["test"]["non_fractured"], 200);
    // Every usable non-fractured image is used, split by the name hash.
    assert_eq!(j["classification_split_config"]["method"], "name-hash");
    let used: u64 = ["train", "valid", "test"]
        .iter()
        .map(|p| {
            j["classification_split"][p]["non_fractured"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let truncated = j["problems"]["truncated"].as_array().unwrap().len() as u64;
    let all = j["images"]["non_fractured"].as_u64().unwrap();
    assert!(
        used + truncated >= all && used <= all,
        "{used} of {all} used"
    );
    assert_eq!(
        j["problems"]["label_conflicts"],
        serde_json::json!(["IMG0003298.jpg"])
    );
    assert!(j["problems"]["exif_rotated"]
        .as_array()
        .unwrap()
        .contains(&Value::from("IMG0002628.jpg")));
    assert!(!j["problems"]["truncated"].as_array().unwrap().is_empty());
    assert_eq!(j["problems"]["cross_split_duplicates"], 0);
}

#[test]
fn edge_inspect_reports_each_input_and_exits_1_on_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let good = sample_dir().join("images/Fractured/IMG0002628.jpg");
    let cut = sample_dir().join("images/Non_fractured/IMG0004092.jpg");
    let empty = tmp.path().join("empty.dcm");
    std::fs::write(&empty, b"").unwrap();
    let r = run(
        "fv-edge",
        &[
            "inspect",
            good.to_str().unwrap(),
            cut.to_str().unwrap(),
            empty.to_str().unwrap(),
        ],
        tmp.path(),
    )
    .expect_code(1);
    let lines: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", r.describe());
    assert_eq!(lines[0]["size"], serde_json::json!([454, 373]));
    assert_eq!(lines[1]["error"]["code"], "truncated");
    assert!(lines[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("IMG0004092.jpg"));
    assert_eq!(lines[2]["error"]["code"], "empty");

    run("fv-edge", &["inspect", good.to_str().unwrap()], tmp.path()).expect_code(0);
}
