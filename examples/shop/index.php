<?php

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

shop_start();

$rows = '';
foreach (CATALOG as $id => [$name, $cents]) {
    $rows .= '<tr><td>'.h($name).'</td><td>'.price($cents).'</td><td><form method="post" action="/shop/cart.php">'
        .'<input type="hidden" name="item" value="'.h($id).'"><button id="add-'.h($id).'">add to cart</button></form></td></tr>';
}
$login = isset($_SESSION['user']) ? '' : '<h2 id="login">Log in</h2>
<form method="post" action="/shop/login.php"><label>Name <input name="user" id="login-user" required maxlength="40"></label> <button id="login-submit">log in</button></form>';

render('Example shop', $login.'<h2>Catalog</h2><table>'.$rows.'</table>');
