from cwpo_ray.manifest import Manifest, fingerprint, stage_key


def test_fingerprint_tracks_content(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "a.txt").write_text("x")
    f1 = fingerprint(d)
    (d / "a.txt").write_text("y")
    assert fingerprint(d) != f1
    (d / "a.txt").write_text("x")
    assert fingerprint(d) == f1


def test_stage_key_depends_on_config_and_inputs():
    k = stage_key("s", {"lr": 1}, {"data": "f1"})
    assert k == stage_key("s", {"lr": 1}, {"data": "f1"})
    assert k != stage_key("s", {"lr": 2}, {"data": "f1"})
    assert k != stage_key("s", {"lr": 1}, {"data": "f2"})


def test_manifest_skips_finished_stage_and_reruns_changed(tmp_path):
    calls = []

    def make(text):
        def fn():
            calls.append(text)
            out = tmp_path / "out"
            out.mkdir(exist_ok=True)
            (out / "f").write_text(text)
            return {"n": len(calls)}
        return fn

    m = Manifest(tmp_path)
    fp1, res, skipped = m.run("stage", {"a": 1}, {}, tmp_path / "out", make("one"))
    assert not skipped and res == {"n": 1}
    # a new process reading the manifest skips it
    fp2, res2, skipped2 = Manifest(tmp_path).run("stage", {"a": 1}, {}, tmp_path / "out", make("two"))
    assert skipped2 and fp2 == fp1 and res2 == {"n": 1} and calls == ["one"]
    # config change -> re-run
    _, _, skipped3 = Manifest(tmp_path).run("stage", {"a": 2}, {}, tmp_path / "out", make("three"))
    assert not skipped3 and calls == ["one", "three"]
    # output tampered with -> re-run
    (tmp_path / "out" / "f").write_text("tampered")
    _, _, skipped4 = Manifest(tmp_path).run("stage", {"a": 2}, {}, tmp_path / "out", make("four"))
    assert not skipped4


def test_interrupted_stage_is_not_marked_done(tmp_path):
    def boom():
        (tmp_path / "out").mkdir()
        raise KeyboardInterrupt

    m = Manifest(tmp_path)
    try:
        m.run("stage", {}, {}, tmp_path / "out", boom)
    except KeyboardInterrupt:
        pass
    assert "stage" not in Manifest(tmp_path).data
