import pytest
from django.core.exceptions import ImproperlyConfigured

from imagesearch.env import Env, parse_database_url


def test_unset_and_blank_values_use_the_default():
    env = Env({"BLANK": "  "})
    assert env.int("MISSING", 7) == 7
    assert env.bool("BLANK", True) is True


@pytest.mark.parametrize("call", [
    lambda env: env.bool("V", False),
    lambda env: env.int("V", 1),
    lambda env: env.choice("V", "cpu", ("cpu", "cuda")),
])
def test_malformed_values_are_errors_naming_the_variable(call):
    with pytest.raises(ImproperlyConfigured, match=r"^V='maybe' is invalid"):
        call(Env({"V": "maybe"}))


def test_integer_bounds_are_enforced():
    with pytest.raises(ImproperlyConfigured, match="between 1 and 10"):
        Env({"N": "0"}).int("N", 5, minimum=1, maximum=10)
    assert Env({"N": "10"}).int("N", 5, minimum=1, maximum=10) == 10


def test_lists_and_booleans():
    env = Env({"L": "a, b,,c", "B": "Yes"})
    assert env.list("L", []) == ["a", "b", "c"]
    assert env.bool("B", False) is True


def test_database_url():
    config = parse_database_url("postgres://user:p%40ss@db.example:5433/images?sslmode=require")
    assert config["NAME"] == "images" and config["USER"] == "user" and config["PASSWORD"] == "p@ss"
    assert config["HOST"] == "db.example" and config["PORT"] == "5433"
    assert config["OPTIONS"] == {"sslmode": "require"}
    assert parse_database_url("postgresql:///images?host=/run/pg")["HOST"] == "/run/pg"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgres://u@h/", "postgres://u@h:notaport/db"])
def test_bad_database_urls_are_errors(url):
    with pytest.raises(ImproperlyConfigured):
        parse_database_url(url)
