package envfile

import (
	"strings"
	"testing"
)

func TestFormatParseRoundTrip(t *testing.T) {
	in := map[string]string{"APP_ENV": "demo", "URL": "a=b c", "EMPTY": ""}
	b, err := Format(in)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if got := lines[1:]; strings.Join(got, "|") != "APP_ENV=demo|EMPTY=|URL=a=b c" {
		t.Fatalf("lines = %q", got)
	}
	vars, err := Parse(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 3 || vars[0] != (Var{"APP_ENV", "demo"}) || vars[2] != (Var{"URL", "a=b c"}) {
		t.Fatalf("parse = %+v", vars)
	}
	if e := Environ(vars); e[1] != "EMPTY=" {
		t.Fatalf("environ = %q", e)
	}
}

func TestParseOverridesAndRejects(t *testing.T) {
	vars, err := Parse(strings.NewReader("# c\nA=1\n\nB=2\nA=3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 2 || vars[0] != (Var{"A", "3"}) || vars[1] != (Var{"B", "2"}) {
		t.Fatalf("parse = %+v", vars)
	}
	for _, bad := range []string{"NOEQUALS\n", "1A=x\n", "A B=x\n", "=x\n"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestFormatRejects(t *testing.T) {
	if _, err := Format(map[string]string{"A=B": "x"}); err == nil {
		t.Error("key with = accepted")
	}
	if _, err := Format(map[string]string{"A": "x\ny"}); err == nil {
		t.Error("value with newline accepted")
	}
}
