// Renders Go text/template chat templates the way Ollama executes a Modelfile's TEMPLATE, for
// tests/test_ollama_templates.py: standard library only, so a plain `go build` of this one file is enough.
//
// It mirrors Ollama's template/template.go (github.com/ollama/ollama, main): `Parse` (missingkey=zero, the functions
// json, currentDate and yesterdayDate; toTypeScriptType is for tools, which no case has), `Vars`/`Identifiers`, and
// `Execute` for a template that uses .Messages: `collate` (the system messages' contents joined by a blank line as
// .System; consecutive messages of one role, tool messages aside, merged into one, joined by a blank line), then
// `convertMessagesForTemplate` (pointers to templateMessage) and the same map of values (no "Prompt" key). A template
// that uses neither .Messages nor .Response is one Ollama renders its legacy way (per turn, .Prompt/.Response),
// which this script does not: it refuses it.
//
// stdin:  {"template": "...", "cases": [{"messages": [{"role": "user", "content": "..."}]}]}
// stdout: {"renders": [{"text": "...", "error": ""}]}, one per case, in order; a template that does not parse (or
// does not use .Messages) is one error for the whole input (exit status 1).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Message has the fields of Ollama's api.Message that a plain text conversation fills.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ImageData is api.ImageData.
type ImageData []byte

// templateToolCall stands for Ollama's templateToolCall: no case has tool calls, so its fields do not matter.
type templateToolCall struct {
	ID string
}

// templateMessage is Ollama's templateMessage, field for field.
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []ImageData
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

type Case struct {
	Messages []Message `json:"messages"`
}

type Input struct {
	Template string `json:"template"`
	Cases    []Case `json:"cases"`
}

type Render struct {
	Text  string `json:"text"`
	Error string `json:"error"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		// Currently ignoring the format argument, but accepting it for future use
		// Default format is YYYY-MM-DD
		return time.Now().Format("2006-01-02")
	},
	"yesterdayDate": func(args ...string) string {
		return time.Now().AddDate(0, 0, -1).Format("2006-01-02")
	},
}

// Identifiers is Ollama's: the field and variable names of a node, recursively.
func Identifiers(n parse.Node) ([]string, error) {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, n := range n.Nodes {
			i, err := Identifiers(n)
			if err != nil {
				return names, err
			}
			names = append(names, i...)
		}
		return names, nil
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined template specified")
		}
		return Identifiers(n.Pipe)
	case *parse.ActionNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined action in template")
		}
		return Identifiers(n.Pipe)
	case *parse.BranchNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined branch")
		}
		names, err := Identifiers(n.Pipe)
		if err != nil {
			return names, err
		}
		for _, n := range []*parse.ListNode{n.List, n.ElseList} {
			if n != nil {
				i, err := Identifiers(n)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.IfNode:
		return Identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return Identifiers(&n.BranchNode)
	case *parse.WithNode:
		return Identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				i, err := Identifiers(a)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.FieldNode:
		return n.Ident, nil
	case *parse.VariableNode:
		return n.Ident, nil
	}
	return nil, nil
}

// vars is Ollama's Template.Vars, as a set of lower-cased names.
func vars(tmpl *template.Template) (map[string]bool, error) {
	set := map[string]bool{}
	for _, tt := range tmpl.Templates() {
		for _, n := range tt.Root.Nodes {
			v, err := Identifiers(n)
			if err != nil {
				return set, err
			}
			for _, name := range v {
				set[strings.ToLower(name)] = true
			}
		}
	}
	return set, nil
}

// parseTemplate is Ollama's Parse, less the {{ .Response }} it appends to a template with neither .Messages nor
// .Response: such a template is refused here (Ollama would render it the legacy way).
func parseTemplate(s string) (*template.Template, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, err
	}
	names, err := vars(tmpl)
	if err != nil {
		return nil, err
	}
	if !names["messages"] {
		return nil, errors.New("the template does not use .Messages: Ollama renders it the legacy way " +
			"(.Prompt/.Response per turn), which this script does not")
	}
	return tmpl, nil
}

// collate is Ollama's: the system messages' contents joined by a blank line, and the messages with consecutive
// messages of one role (except tool messages) merged into the first, contents joined by a blank line.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

// convertMessagesForTemplate is Ollama's, for messages without tool calls.
func convertMessagesForTemplate(messages []*Message) []*templateMessage {
	if messages == nil {
		return nil
	}
	result := make([]*templateMessage, len(messages))
	for i, msg := range messages {
		result[i] = &templateMessage{Role: msg.Role, Content: msg.Content}
	}
	return result
}

// values is what Ollama's Template.Execute passes to a template that uses .Messages, for a request without tools
// and without think.
func values(messages []Message) map[string]any {
	system, collated := collate(messages)
	var tools []any // convertToolsForTemplate(nil): a nil templateTools
	return map[string]any{
		"System":     system,
		"Messages":   convertMessagesForTemplate(collated),
		"Tools":      tools,
		"Response":   "",
		"Think":      false,
		"ThinkLevel": "",
		"IsThinkSet": false,
	}
}

func main() {
	var input Input
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fmt.Fprintln(os.Stderr, "reading the input:", err)
		os.Exit(2)
	}
	tmpl, err := parseTemplate(input.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parsing the template:", err)
		os.Exit(1)
	}
	renders := make([]Render, 0, len(input.Cases))
	for _, c := range input.Cases {
		var out bytes.Buffer
		r := Render{}
		if err := tmpl.Execute(&out, values(c.Messages)); err != nil {
			r.Error = err.Error()
		} else {
			r.Text = out.String()
		}
		renders = append(renders, r)
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"renders": renders}); err != nil {
		fmt.Fprintln(os.Stderr, "writing the output:", err)
		os.Exit(2)
	}
}
