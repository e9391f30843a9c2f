// A checkerboard seen through a swirl: squares bend around a random centre.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - iMouse.xy) / iResolution.y;
    float r = length(uv);
    float twist = (2.0 + 10.0 * iParams[0].x) * exp(-r * (1.0 + 4.0 * iParams[0].y));
    uv = kd_rot(twist + iTime) * uv;
    vec2 cell = floor(uv * (3.0 + 12.0 * iParams[0].z));
    float checker = mod(cell.x + cell.y, 2.0);
    vec3 a = kd_palette(0.1);
    vec3 b = kd_palette(0.4 + 0.5 * iParams[0].w);
    fragColor = vec4(mix(a, b, checker), 1.0);
}
