package repl

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// word is one shell-like word of a command line.
type word struct {
	text       string // unquoted
	start, end int    // byte span in the line, quotes included
}

// splitWords splits a line into words: blanks separate them, single and
// double quotes group, a backslash escapes the next byte (outside single
// quotes). An unterminated quote ends the word at the end of the line (so
// completion works on a half-typed word); quoteOpen reports it.
func splitWords(line string) (words []word, quoteOpen bool) {
	i := 0
	for {
		for i < len(line) && isBlank(line[i]) {
			i++
		}
		if i >= len(line) {
			return words, false
		}
		w := word{start: i}
		var b strings.Builder
		var quote byte
		for ; i < len(line); i++ {
			c := line[i]
			switch {
			case quote == '\'':
				if c == '\'' {
					quote = 0
				} else {
					b.WriteByte(c)
				}
			case c == '\\' && i+1 < len(line) && (quote == 0 || strings.IndexByte(`"\$`+"`", line[i+1]) >= 0):
				i++
				b.WriteByte(line[i])
			case quote == '"':
				if c == '"' {
					quote = 0
				} else {
					b.WriteByte(c)
				}
			case c == '\'' || c == '"':
				quote = c
			case isBlank(c):
				goto done
			default:
				b.WriteByte(c)
			}
		}
	done:
		w.text, w.end = b.String(), i
		words = append(words, w)
		if quote != 0 {
			return words, true
		}
	}
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

func texts(ws []word) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.text
	}
	return out
}

// quoteWord quotes s for a command line when it needs it.
func quoteWord(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t'\"\\$`") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// parseArgs parses flags that may be interspersed with positional
// arguments (everything after "--" is positional).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErr(fs.Name(), "%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// usageErr is an InvalidArgument error that points at the command's help.
func usageErr(cmd, format string, a ...any) error {
	return invalid("%s: %s (see: help %s)", cmd, fmt.Sprintf(format, a...), cmd)
}
