// A Go app run by tqserver (type: http): net/http only. tqserver builds it
// (`go build -o bin/app .`), gives it WORKER_PORT (listen here, on
// 127.0.0.1), WORKER_NAME, WORKER_ROUTE (the URL prefix it serves; paths
// arrive unchanged) and WORKER_MODE, and rebuilds and swaps it when a .go
// file changes.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("WORKER_PORT")
	name := os.Getenv("WORKER_NAME")
	route := strings.TrimSuffix(os.Getenv("WORKER_ROUTE"), "/")

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc(route+"/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s at %s (%s)\n", name, os.Getenv("WORKER_ROUTE"), os.Getenv("WORKER_MODE"))
	})
	mux.HandleFunc(route+"/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]interface{}{
			"method":  r.Method,
			"url":     r.URL.RequestURI(),
			"headers": r.Header,
			"body":    string(body),
		})
	})

	server := &http.Server{Addr: "127.0.0.1:" + port, Handler: mux}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(ctx)
	}()
	log.Printf("%s listening on %s", name, server.Addr)
	if err := server.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
