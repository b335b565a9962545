"""aliases(5): parsing with exact error lines, expansion, and the reload that keeps a good table."""
from __future__ import annotations

import os

import pytest
from zope.interface.verify import verifyObject

from appliance.aliases import AliasBrokenError, AliasesError, AliasLoopError, AliasResolver, load_aliases
from appliance.interfaces import IAliasResolver

DOMAINS = ("example.test", "example.org")
OFF = " (set [aliases] allow_commands = yes to allow them)"


@pytest.fixture
def write(tmp_path):
    def write(text, name="aliases"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def table(write, text, allow_commands=False):
    return load_aliases(write(text), DOMAINS, allow_commands)


def problems(write, text, allow_commands=False):
    path = write(text)
    with pytest.raises(AliasesError) as info:
        load_aliases(path, DOMAINS, allow_commands)
    return [p.replace(path, "FILE") for p in info.value.problems]


# -- parsing -----------------------------------------------------------------------------------

def test_bare_names_apply_to_every_local_domain_and_bare_targets_follow(write):
    t = table(write, "team: alice, bob@Elsewhere.TEST\n")
    assert t.resolve("team@example.test") == ["alice@example.test", "bob@elsewhere.test"]
    assert t.resolve("Team@EXAMPLE.ORG") == ["alice@example.org", "bob@elsewhere.test"]
    assert t.resolve("team@remote.test") is None


def test_full_address_name_applies_only_there_and_wins_over_bare_name(write):
    t = table(write, "info: alice\ninfo@example.org: bob\n")
    assert t.resolve("info@example.test") == ["alice@example.test"]
    assert t.resolve("info@example.org") == ["bob@example.org"]


def test_not_an_alias_gives_none(write):
    t = table(write, "team: alice\n")
    assert t.resolve("alice@example.test") is None
    assert t.resolve("not an address") is None


def test_comments_blank_lines_and_continuations(write):
    t = table(write, "# staff\n\nteam: alice,\n  bob\n# still the team\n\tcarol dave\nother: x@y.test\n")
    assert t.resolve("team@example.test") == [f"{u}@example.test" for u in ("alice", "bob", "carol", "dave")]
    assert t.resolve("other@example.test") == ["x@y.test"]


def test_missing_file_is_an_empty_table(tmp_path):
    assert load_aliases(str(tmp_path / "none"), DOMAINS).resolve("root@example.test") is None


def test_unreadable_file(write):
    path = write("")
    with open(path, "wb") as f:
        f.write(b"root: \xff\n")
    with pytest.raises(AliasesError) as info:
        load_aliases(path, DOMAINS)
    assert info.value.problems[0].startswith(f"{path}: cannot read")


def test_every_error_is_reported_with_its_line(write):
    assert problems(write, (
        "# header\n"
        "root: admin@example.test\n"       # 2 fine
        "no colon here\n"                  # 3
        "root: other@example.test\n"       # 4 duplicate
        "empty:\n"                         # 5
        "bad: alice@, good\n"              # 6
        ": alice\n"                        # 7
        "pipe: |/usr/bin/procmail\n"       # 8
        "file: /var/mail/box\n"            # 9
        "quoted: \"|cmd arg\"\n"           # 10
        "b@d@: alice\n"                    # 11
    )) == [
        "FILE:3: missing colon after the alias name: 'no colon here'",
        "FILE:4: duplicate alias 'root' (first defined at FILE:2)",
        "FILE:5: empty target list",
        "FILE:6: bad address: 'alice@'",
        "FILE:7: missing alias name",
        f"FILE:8: commands and files are not allowed: |/usr/bin/procmail{OFF}",
        f"FILE:9: commands and files are not allowed: /var/mail/box{OFF}",
        f"FILE:10: commands and files are not allowed: |cmd arg{OFF}",
        "FILE:11: bad alias name: 'b@d@'",
    ]


def test_continuation_without_alias_and_duplicate_full_address(write):
    assert problems(write, "  alice\nInfo@Example.org: a\ninfo@example.org: b\n") == [
        "FILE:1: continuation line without an alias before it",
        "FILE:3: duplicate alias 'info@example.org' (first defined at FILE:2)",
    ]


def test_error_in_a_continued_definition_names_its_first_line(write):
    found = problems(write, "ok: a\nteam: alice,\n   |cmd\n")
    assert found == [f"FILE:2: commands and files are not allowed: |cmd{OFF}"]


# -- :include: ---------------------------------------------------------------------------------

def test_include_relative_to_the_aliases_file(write):
    write("# members\nx@y.test\n\nz@y.test, carol\n", name="staff.list")
    t = table(write, "staff: :include:staff.list, boss\n")
    assert t.resolve("staff@example.org") == ["x@y.test", "z@y.test", "carol@example.org", "boss@example.org"]


def test_include_with_absolute_path(write, tmp_path):
    members = write("x@y.test\n", name="abs.list")
    assert table(write, f"staff: :include:{members}\n").resolve("staff@example.test") == ["x@y.test"]


def test_unreadable_include(write, tmp_path):
    found = problems(write, "ok: a\nstaff: :include:missing.list\n")
    assert found == [f"FILE:2: cannot read include file {tmp_path}/missing.list: No such file or directory"]


def test_bad_entries_in_include_name_the_include_file_and_line(write, tmp_path):
    write("x@y.test\n|cmd\nbad@\n", name="staff.list")
    found = problems(write, "staff: :include:staff.list\n")
    include = f"{tmp_path}/staff.list"
    assert found == [
        f"{include}:2: commands and files are not allowed: |cmd{OFF}",
        f"{include}:3: bad address: 'bad@'",
        f"FILE:1: problems in include file {include}",
    ]


# -- commands and files ([aliases] allow_commands = yes) -----------------------------------------

def test_commands_and_files_when_allowed(write):
    t = table(write, (
        'archive: |/usr/bin/archive --folder "in box", bob\n'          # a command runs to the next comma
        'filter: "|/usr/bin/filter one, two" /var/mail/filtered.mbox\n'  # quotes keep commas in
        'old: |/bin/sh -c "cat >> /srv/old, mail"\n'
        'all: archive, filter, "/srv/all mail.mbox"\n'
    ), allow_commands=True)
    assert t.resolve("archive@example.test") == ['|/usr/bin/archive --folder "in box"', "bob@example.test"]
    assert t.resolve("filter@example.org") == ["|/usr/bin/filter one, two", "/var/mail/filtered.mbox"]
    assert t.resolve("old@example.test") == ['|/bin/sh -c "cat >> /srv/old, mail"']
    assert t.resolve("all@example.test") == ['|/usr/bin/archive --folder "in box"', "bob@example.test",
                                             "|/usr/bin/filter one, two", "/var/mail/filtered.mbox",
                                             "/srv/all mail.mbox"]


def test_command_continued_on_the_next_line(write):
    t = table(write, "archive: bob,\n  |/usr/bin/archive\n  --quiet\n", allow_commands=True)
    assert t.resolve("archive@example.test") == ["bob@example.test", "|/usr/bin/archive --quiet"]


def test_bad_commands_and_files_even_when_allowed(write):
    assert problems(write, (
        "a: ./box\n"
        "b: ~/box\n"
        "c: /dev/null\n"
        "d: /proc/self/fd/1\n"
        "e: /var/mail/../../etc/passwd\n"
        "f: //dev/sda\n"
        "g: /var/mail/\n"
        'h: "|unclosed, bob\n'
        "i: |\n"
        "j: |/bin/filter \"a, b\n"
        "k: /sys/kernel\n"
    ), allow_commands=True) == [
        "FILE:1: a file target needs an absolute path: ./box",
        "FILE:2: a file target needs an absolute path: ~/box",
        "FILE:3: files in /dev, /proc, /sys are not allowed: /dev/null",
        "FILE:4: files in /dev, /proc, /sys are not allowed: /proc/self/fd/1",
        "FILE:5: write the file path without //, ., .. or a trailing /: /var/mail/../../etc/passwd",
        "FILE:6: write the file path without //, ., .. or a trailing /: //dev/sda",
        "FILE:7: write the file path without //, ., .. or a trailing /: /var/mail/",
        'FILE:8: missing closing double quote: "|unclosed, bob',
        "FILE:9: empty command after |",
        'FILE:10: missing closing double quote: |/bin/filter "a, b',
        "FILE:11: files in /dev, /proc, /sys are not allowed: /sys/kernel",
    ]


def test_include_file_of_ours_may_name_commands(write):
    write("|/usr/bin/archive\n/srv/staff.mbox, alice\n", name="staff.list")
    t = table(write, "staff: :include:staff.list\n", allow_commands=True)
    assert t.resolve("staff@example.test") == ["|/usr/bin/archive", "/srv/staff.mbox", "alice@example.test"]


def test_include_file_of_another_user_may_not_name_commands(write, tmp_path, monkeypatch):
    members = write("alice\n|/usr/bin/archive\n", name="staff.list")
    if os.geteuid() == 0:
        os.chown(members, 65534, 65534)                   # root reads a file that nobody may edit
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)   # the file is not ours any more
    owner, reader = os.stat(members).st_uid, os.geteuid()
    assert problems(write, "staff: :include:staff.list\n", allow_commands=True) == [
        f"{members}:2: commands and files are not allowed: |/usr/bin/archive "
        f"(include file owned by uid {owner}, not by root or uid {reader})",
        f"FILE:1: problems in include file {members}",
    ]


def test_include_file_commands_need_allow_commands_too(write):
    members = write("|/usr/bin/archive\n", name="staff.list")
    assert problems(write, "staff: :include:staff.list\n") == [
        f"{members}:1: commands and files are not allowed: |/usr/bin/archive{OFF}",
        f"FILE:1: problems in include file {members}",
    ]


def test_resolver_keeps_allow_commands_across_reloads(write):
    path = write("archive: |/usr/bin/archive\n")
    with pytest.raises(AliasBrokenError):             # a command without allow_commands: never run
        AliasResolver(path, DOMAINS).resolve("archive@example.test")
    resolver = AliasResolver(path, DOMAINS, allow_commands=True)
    write("archive: /srv/archive.mbox\n")
    assert resolver.reload() == []
    assert resolver.resolve("archive@example.test") == ["/srv/archive.mbox"]


# -- expansion ---------------------------------------------------------------------------------

def test_recursive_expansion_with_duplicates_removed_in_order(write):
    t = table(write, "all: devs, ops, alice\ndevs: alice, bob\nops: bob, Carol@X.test, carol@x.test\n")
    assert t.resolve("all@example.test") == ["alice@example.test", "bob@example.test", "Carol@x.test"]


def test_alias_naming_itself_is_a_real_mailbox(write):
    t = table(write, "bob: bob, bob@elsewhere.test\nteam: bob\n")
    assert t.resolve("bob@example.test") == ["bob@example.test", "bob@elsewhere.test"]
    assert t.resolve("team@example.org") == ["bob@example.org", "bob@elsewhere.test"]


def test_loop_raises(write):
    t = table(write, "a: b\nb: c, x@y.test\nc: a\n")
    with pytest.raises(AliasLoopError, match="a@example.test -> b@example.test -> c@example.test -> a@example.test"):
        t.resolve("a@example.test")


def test_depth_limit_is_ten_levels(write):
    chain = "".join(f"a{i}: a{i + 1}\n" for i in range(1, 10))
    assert table(write, chain).resolve("a1@example.test") == ["a10@example.test"]  # 9 aliases deep
    assert table(write, chain + "a10: z\n").resolve("a1@example.test") == ["z@example.test"]  # 10
    with pytest.raises(AliasLoopError, match="deeper than 10 levels"):
        table(write, chain + "a10: a11\na11: z\n").resolve("a1@example.test")


def test_postmaster_and_abuse_fall_back_to_root(write):
    t = table(write, "root: admin@example.test\n")
    assert t.resolve("postmaster@example.test") == ["admin@example.test"]
    assert t.resolve("abuse@example.org") == ["admin@example.test"]
    assert t.resolve("postmaster@remote.test") is None


def test_postmaster_defined_in_the_file_wins(write):
    t = table(write, "root: admin@example.test\npostmaster: pm@example.test\n")
    assert t.resolve("postmaster@example.test") == ["pm@example.test"]
    assert t.resolve("abuse@example.test") == ["admin@example.test"]


def test_postmaster_without_root_stays_unresolved(write):
    assert table(write, "team: alice\n").resolve("postmaster@example.test") is None


def test_loop_problems_name_the_definition(write):
    path = write("a: a\nb: c\nc: b\n")
    assert load_aliases(path, ("example.test",)).loop_problems() == [
        f"{path}:2: alias loop: b@example.test -> c@example.test -> b@example.test",
        f"{path}:3: alias loop: c@example.test -> b@example.test -> c@example.test",
    ]


# -- the resolver --------------------------------------------------------------------------------

def test_resolver_provides_the_interface_and_resolves(write):
    resolver = AliasResolver(write("root: admin@example.test\n"), DOMAINS)
    assert verifyObject(IAliasResolver, resolver)
    assert resolver.resolve("root@example.test") == ["admin@example.test"]


def test_resolver_reload_picks_up_changes(write):
    path = write("root: admin@example.test\n")
    resolver = AliasResolver(path, DOMAINS)
    write("root: other@example.test\n")
    assert resolver.reload() == []
    assert resolver.resolve("root@example.test") == ["other@example.test"]


def test_bad_reload_keeps_the_old_table(write):
    path = write("root: admin@example.test\n")
    resolver = AliasResolver(path, DOMAINS)
    write("root: other@example.test\nbroken\n")
    assert resolver.reload() == [f"{path}:2: missing colon after the alias name: 'broken'"]
    assert resolver.resolve("root@example.test") == ["admin@example.test"]


def test_reload_with_a_loop_keeps_the_old_table(write):
    path = write("root: admin@example.test\n")
    resolver = AliasResolver(path, ("example.test",))
    write("root: a\na: root\n")
    assert resolver.reload() == [
        f"{path}:1: alias loop: root@example.test -> a@example.test -> root@example.test",
        f"{path}:2: alias loop: a@example.test -> root@example.test -> a@example.test",
    ]
    assert resolver.resolve("root@example.test") == ["admin@example.test"]


def test_resolver_starts_past_bad_lines_and_defers_only_their_names(write):
    """A machine rebooted with a mistake in the aliases file still takes mail (issue 10, #15)."""
    path = write("broken\nsales: bob, |/usr/bin/archive\nroot: admin\n")
    resolver = AliasResolver(path, DOMAINS)
    assert resolver.resolve("root@example.test") == ["admin@example.test"]
    with pytest.raises(AliasBrokenError):             # neither bounced as unknown nor sent to a user sales
        resolver.resolve("sales@example.test")
    assert resolver.resolve("bob@example.test") is None
    assert [action for _, action in resolver.problems] == ["deferred at RCPT with 4.3.0 until fixed"] * 2
    assert [problem.split(": ", 1)[0] for problem, _ in resolver.problems] == [f"{path}:1", f"{path}:2"]
    with pytest.raises(AliasesError):                 # `check` and reloads still see every problem
        load_aliases(path, DOMAINS)


def test_resolver_still_refuses_an_unreadable_file(write):
    path = write("root: admin\n")
    os.chmod(path, 0)
    if os.access(path, os.R_OK):                      # root reads anything: nothing to test there
        os.chmod(path, 0o600)
        path = os.path.dirname(path)                  # a folder cannot be read as a file either
    with pytest.raises(AliasesError):
        AliasResolver(path, DOMAINS)


def test_resolver_with_missing_file_has_no_aliases(tmp_path):
    resolver = AliasResolver(os.path.join(tmp_path, "none"), DOMAINS)
    assert resolver.resolve("root@example.test") is None
