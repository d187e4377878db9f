<?php
// What PHP sees and sends, for the parity test: the same request through
// php-cgi and tqserver-php must print the same thing.
$do = $_GET['do'] ?? '';
switch ($do) {
    case 'code404': http_response_code(404); break;
    case 'status': header('Status: 201 Created'); break;
    case 'statusline': header("HTTP/1.1 418 I'm a teapot"); break;
    case 'redirect': header('Location: /elsewhere'); break;
    case 'redirect301': header('Location: /moved', true, 301); break;
    case 'notmodified': http_response_code(304); header('Content-Type: text/plain'); header('ETag: "x"'); exit;
    case 'cookies': setcookie('a', '1'); setcookie('b', '2', ['path' => '/p', 'httponly' => true]); header('Set-Cookie: c=3', false); break;
    case 'ob': ob_start(); echo "buffered "; ob_end_flush(); break;
    case 'stream': for ($i = 0; $i < 3; $i++) { echo "chunk $i\n"; flush(); } break;
    case 'exit': echo "before exit\n"; exit(3);
    case 'fatal': echo "before fatal\n"; undefined_function_here();
    case 'warning': echo $undefined_variable; trigger_error('a user warning', E_USER_WARNING); break;
    case 'errorlog': error_log('a line for the error log'); break;
    case 'memory': ini_set('memory_limit', '8M'); $s = str_repeat('x', 32 * 1024 * 1024); break;
    case 'session': session_start(); $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1; echo 'session ', strlen(session_id()), "\n"; break;
    case 'headers': header('X-One: 1'); header('X-Two: 2'); header_remove('X-One'); echo json_encode(headers_list()), "\n"; break;
    case 'big': echo str_repeat("0123456789abcdef", 20000), "\n"; break;
    case 'ini': echo json_encode(['auto_prepend' => ini_get('auto_prepend_file'), 'precision' => ini_get('precision'), 'fix' => ini_get('cgi.fix_pathinfo')]), "\n"; break;
}
$server = $_SERVER;
unset($server['REQUEST_TIME'], $server['REQUEST_TIME_FLOAT']);
$files = $_FILES;
array_walk_recursive($files, function (&$value, $key) { if ($key === 'tmp_name') { $value = $value === '' ? '' : 'TMP'; } });
echo json_encode([
    'sapi' => PHP_SAPI,
    'server' => $server,
    'get' => $_GET,
    'post' => $_POST,
    'cookie' => $_COOKIE,
    'files' => $files,
    'request' => $_REQUEST,
    'input' => file_get_contents('php://input'),
    'code' => http_response_code(),
    'headers' => function_exists('getallheaders') ? getallheaders() : null,
    'cwd' => getcwd(),
    'prepended' => defined('PREPENDED'),
], JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES), "\n";
