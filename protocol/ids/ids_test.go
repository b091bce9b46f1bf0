package ids

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, id := range []string{"a", "job-1", "x.y_z", strings.Repeat("a", 128), NewExecID()} {
		if !Valid(id) {
			t.Errorf("Valid(%q) = false", id)
		}
	}
	for _, id := range []string{"", "a b", "a/b", "é", strings.Repeat("a", 129), "a\x00"} {
		if Valid(id) {
			t.Errorf("Valid(%q) = true", id)
		}
	}
	if NewExecID() == NewExecID() {
		t.Error("two random ids are equal")
	}
}
