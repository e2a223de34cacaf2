from imagesearch import protogen


def test_generated_stubs_match_protos() -> None:
    assert protogen.stale_files() == [], "run `make proto` and commit the result"
